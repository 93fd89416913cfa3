"""What this machine could do at best: the model's own matrix kernels, replayed alone, per image.

The ceiling is measured with the kernels the model runs, not a square sgemm: every matrix product and
convolution of one caption batch (the ops torch's FLOP counter counts) is recorded with its shapes,
strides and dtype, and each distinct call is timed again on its own (best of a few rounds, which can
alternate with runs of the batch itself) and weighted by how often the batch makes it. A batch cannot
run faster than its matrix kernels alone, so the service's share of that ceiling stays at or below 1;
what separates the two is everything else (elementwise ops, layer norms, softmax, Python, the other
processes). The sgemm rate (4096^3, fp32) is kept as the machine's headline figure. Build machines differ
about 2x (AVX-512 or AVX2 only, AMX, their clocks, their neighbours), so a figure alone says little; its
share of the machine's own ceiling compares across machines."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from inference_consumer.model import CaptionModel
    from inference_consumer.stages import StageSink

# The extensions that decide a CPU's matrix throughput, in the order they are reported.
MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
SGEMM_SIZE = 4096
SGEMM_REPEATS = 5
KERNEL_REPEATS = 3  # rounds of the kernel replay: each distinct call timed once a round, the best kept
# Matrix kernels outside torch's FLOP counter that the model may run: the fast decoder's oneDNN-packed
# linears (CAPTIONER_PACKED_CPU_WEIGHTS).
PACKED_KERNELS = frozenset({"mkldnn._linear_pointwise"})
OUTSIDE_STAGES = "outside_stages"  # kernel calls made after the model's last stage ended (none expected)


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    flags: tuple[str, ...]  # MATRIX_FLAGS this CPU has
    threads: int
    sgemm_gflops: float  # fp32 matmul, best of SGEMM_REPEATS, on `threads` threads

    def describe(self) -> str:
        return f"{self.cpu_model}; {' '.join(self.flags) or 'no AVX2'}; {self.threads} threads"


@dataclass(frozen=True)
class KernelTime:
    """One batch's matrix kernels, replayed alone: what the batch costs at best on this machine."""

    dtype: str  # the model's, e.g. float32 or bfloat16
    batch: int
    calls: int  # kernel calls the batch made
    distinct: int  # distinct (op, shapes, strides, dtype) among them
    seconds: float  # sum over the calls of each one's best time
    # The same per stage of the batch that made the calls (inference_consumer/stages.py: image_encoder,
    # prefill, decoding_steps); their sum is `seconds`
    stage_seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def img_s(self) -> float:
        return self.batch / self.seconds


def workers_note(processes: int) -> str:
    """How a rate measured in one process counts for a run's several workers, each on cores of its own."""
    return f", x {processes} workers (one process's rate, each on its own cores)" if processes > 1 else ""


@dataclass(frozen=True)
class Ceiling:
    """The machine's ceiling for `processes` workers, each with `machine.threads` cores of its own: one
    worker's kernels replayed alone, as many times over (the workers' cores run side by side; sharing the
    memory bus, they can only do less, so a share of this stays at or below 1)."""

    machine: Machine
    model_gflop_per_img: float
    kernels: KernelTime
    processes: int = 1

    @property
    def img_s(self) -> float:
        return self.processes * self.kernels.img_s

    @property
    def sgemm_img_s(self) -> float:
        """The older, looser ceiling: the square fp32 sgemm's rate over the model's FLOPs."""
        return self.processes * self.machine.sgemm_gflops / self.model_gflop_per_img

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


Signature = tuple[Any, ...]


def _meta(value: Any) -> Any:
    """A hashable description of an op argument: a tensor by its shape, strides and dtype (where its
    storage starts does not matter: the weights of every layer alike are one kernel)."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:  # a packed weight: opaque, replayed as itself
            return ("opaque", value)
        return ("tensor", tuple(value.shape), tuple(value.stride()), value.dtype)
    if isinstance(value, list | tuple):
        return ("seq", tuple(_meta(item) for item in value))
    return ("value", value)


def _rebuild(meta: Any) -> Any:
    """A fresh argument matching `meta`: random values in a tensor of the same layout."""
    import torch

    kind, *rest = meta
    if kind == "seq":
        return [_rebuild(item) for item in rest[0]]
    if kind in ("value", "opaque"):
        return rest[0]
    shape, stride, dtype = rest
    extent = 1 + sum((size - 1) * step for size, step in zip(shape, stride, strict=True) if size)
    storage = torch.empty(extent, dtype=dtype)
    if storage.is_floating_point():
        storage.normal_()
    else:
        storage.zero_()
    return storage.as_strided(shape, stride)


def record_kernels(run: Callable[[], object]) -> Counter[Signature]:
    """Every call `run` makes to an op torch's FLOP counter counts (matrix products, convolutions,
    attention) or to a packed linear (PACKED_KERNELS), by (op, argument layouts)."""
    calls: Counter[Signature] = Counter()
    with _kernel_recorder(calls):
        run()
    return calls


def record_kernels_by_stage(run: Callable[[StageSink], object]) -> dict[str, Counter[Signature]]:
    """record_kernels, split by the stage that made each call: `run` passes the sink it is given to the
    model, which tells it as each stage ends (the calls since the last stage ended are that stage's).
    Calls after the last stage ended, if any, are under OUTSIDE_STAGES."""
    by_stage: dict[str, Counter[Signature]] = {}
    pending: Counter[Signature] = Counter()

    def stage_ended(stage: str, _seconds: float) -> None:
        by_stage.setdefault(stage, Counter()).update(pending)
        pending.clear()

    with _kernel_recorder(pending):
        run(stage_ended)
    if pending:
        by_stage[OUTSIDE_STAGES] = pending
    return {stage: calls for stage, calls in by_stage.items() if calls}


def _kernel_recorder(calls: Counter[Signature]) -> Any:
    """A dispatch mode that counts into `calls` each kernel call record_kernels counts (torch imported
    only when one is made)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Recorder(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's __init_subclass__
        def __torch_dispatch__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            kwargs = kwargs or {}
            if func.overloadpacket in flop_registry or str(func.overloadpacket) in PACKED_KERNELS:
                calls[(func, _meta(list(args)), _meta(sorted(kwargs.items())))] += 1
            else:  # a composite op (linear, matmul) is seen whole here: into the kernels it runs
                with self:
                    decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
            return func(*args, **kwargs)

    return Recorder()  # type: ignore[no-untyped-call]


class KernelReplay:
    """A batch's recorded kernel calls, replayed round by round: in each round every distinct call runs
    once untimed (its operands brought into cache, as the batch's previous op left them) and once timed,
    and each keeps its best time over the rounds. Rounds can alternate with runs of the batch itself, so
    that the batch and its kernels are timed on the same machine: on a host whose neighbours come and go,
    two measurements minutes apart can differ by more than a stage's gap to its kernels."""

    def __init__(self, by_stage: Mapping[str, Counter[Signature]]) -> None:
        self._by_stage = by_stage
        self._distinct = list(dict.fromkeys(signature for calls in by_stage.values() for signature in calls))
        self._best: dict[Signature, float] = {}

    def round(self) -> None:
        import torch

        with torch.inference_mode():
            for signature in self._distinct:
                func, args_meta, kwargs_meta = signature
                args = _rebuild(args_meta)
                kwargs = dict(_rebuild(kwargs_meta))
                func(*args, **kwargs)
                started = time.perf_counter()
                func(*args, **kwargs)
                elapsed = time.perf_counter() - started
                self._best[signature] = min(self._best.get(signature, float("inf")), elapsed)

    def stage_seconds(self) -> dict[str, float]:
        """Each stage's calls at their best times, times how often the batch made each; inf before a
        round has run."""
        if not self._best:
            return dict.fromkeys(self._by_stage, float("inf"))
        return {
            stage: sum(self._best[signature] * count for signature, count in calls.items())
            for stage, calls in self._by_stage.items()
        }

    def kernel_time(self, *, dtype: str, batch: int) -> KernelTime:
        stage_seconds = self.stage_seconds()
        return KernelTime(
            dtype=dtype,
            batch=batch,
            calls=sum(sum(calls.values()) for calls in self._by_stage.values()),
            distinct=len(self._distinct),
            seconds=sum(stage_seconds.values()),
            stage_seconds=stage_seconds,
        )


def kernel_time(
    model: CaptionModel, pixels: list[torch.Tensor], *, max_new_tokens: int, min_new_tokens: int
) -> KernelTime:
    """The matrix kernels of one caption batch of `pixels` on `model`, replayed alone, in all and per
    stage."""
    replay = KernelReplay(
        record_kernels_by_stage(
            lambda on_stage: model.caption(
                pixels,
                max_new_tokens=[max_new_tokens] * len(pixels),
                min_new_tokens=min_new_tokens,
                on_stage=on_stage,
            )
        )
    )
    for _ in range(KERNEL_REPEATS):
        replay.round()
    return replay.kernel_time(dtype=str(model.dtype).removeprefix("torch."), batch=len(pixels))
