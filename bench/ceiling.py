"""What this machine could do at best: its measured sgemm rate over the model's FLOPs per image.

Build machines differ about 2x (AVX-512 or AVX2 only, their clocks, their neighbours), so a figure alone
says little; its share of the machine's own ceiling compares across machines."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from inference_consumer.model import CaptionModel

# The extensions that decide a CPU's matrix throughput, in the order they are reported.
MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
SGEMM_SIZE = 4096
SGEMM_REPEATS = 5


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    flags: tuple[str, ...]  # MATRIX_FLAGS this CPU has
    threads: int
    sgemm_gflops: float  # fp32 matmul, best of SGEMM_REPEATS, on `threads` threads

    def describe(self) -> str:
        return f"{self.cpu_model}; {' '.join(self.flags) or 'no AVX2'}; {self.threads} threads"


@dataclass(frozen=True)
class Ceiling:
    machine: Machine
    model_gflop_per_img: float

    @property
    def img_s(self) -> float:
        return self.machine.sgemm_gflops / self.model_gflop_per_img

    def share(self, img_s: float) -> float:
        return img_s / self.img_s


def cpu_flags(cpuinfo: str) -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which MATRIX_FLAGS it has, from /proc/cpuinfo's text."""
    model, present = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name":
            model = value.strip()
        elif name.strip() == "flags":
            present = set(value.split())
    return model, tuple(flag for flag in MATRIX_FLAGS if flag in present)


def sgemm_gflops(threads: int, *, size: int = SGEMM_SIZE, repeats: int = SGEMM_REPEATS) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)  # first-call allocation and kernel choice
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def describe_machine(threads: int, *, cpuinfo: Path = Path("/proc/cpuinfo")) -> Machine:
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    model, flags = cpu_flags(text)
    return Machine(cpu_model=model, flags=flags, threads=threads, sgemm_gflops=sgemm_gflops(threads))


def model_gflop_per_image(
    model: CaptionModel, pixels: torch.Tensor, *, max_new_tokens: int, min_new_tokens: int
) -> float:
    """FLOPs of one image's caption (encoder and every decoding step) as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.caption([pixels], max_new_tokens=[max_new_tokens], min_new_tokens=min_new_tokens)
    return counter.get_total_flops() / 1e9
