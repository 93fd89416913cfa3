"""What this host's CPU can do, from the kernel's /proc/cpuinfo (Linux; elsewhere: nothing known)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Either gives torch's CPU kernels native bfloat16 matrix products (oneDNN); without both, bfloat16 is
# emulated in float32 and slower than float32 itself.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpuinfo_flags(cpuinfo: str) -> frozenset[str]:
    """The `flags` of /proc/cpuinfo's text (its first processor's)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def host_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    try:
        return cpuinfo_flags(cpuinfo.read_text())
    except OSError:
        return frozenset()


def bf16_refusal(flags: Collection[str]) -> str | None:
    """Why bfloat16 on this CPU is refused (one line), or None when the CPU has native bfloat16."""
    if any(flag in flags for flag in BF16_FLAGS):
        return None
    return (
        "CAPTIONER_DTYPE=bfloat16 on the CPU needs AVX512-BF16 or AMX-BF16, which this CPU lacks "
        "(/proc/cpuinfo flags avx512_bf16, amx_bf16); use float32"
    )
