from __future__ import annotations

from pathlib import Path

from core.cpu_features import bf16_refusal, cpuinfo_flags, host_cpu_flags

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""


def test_flags_are_the_first_processors() -> None:
    assert cpuinfo_flags(CPUINFO) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_tile"}


def test_no_flags_line_means_nothing_known(tmp_path: Path) -> None:
    assert cpuinfo_flags("processor\t: 0\n") == frozenset()
    assert host_cpu_flags(tmp_path / "absent") == frozenset()


def test_bf16_needs_avx512_bf16_or_amx_bf16() -> None:
    assert bf16_refusal({"avx512_bf16"}) is None
    assert bf16_refusal({"amx_bf16"}) is None
    refusal = bf16_refusal({"avx2", "avx512f", "amx_tile"})
    assert refusal is not None and "\n" not in refusal and "CAPTIONER_DTYPE=bfloat16" in refusal
