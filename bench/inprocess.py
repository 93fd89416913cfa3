"""In-process work on the service's own model code (inference_consumer): no Kafka, no HTTP.

* decoder check: the fast decoder's token ids against Hugging Face `generate`'s, on one batch.
* reference runner: one image through exactly what a worker does for it (decode_image with the DCT draft,
  the processor, CaptionModel.caption with the service's decoder and token settings), with the worker's
  thread count, timing its decode + preprocess apart: the service's overhead is its idle end-to-end
  latency less the worker's own inference time and this decode + preprocess.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.ceiling import (
    Ceiling,
    KernelReplay,
    describe_machine,
    kernel_time,
    model_gflop_per_image,
    record_kernels_by_stage,
)
from bench.config import worker_settings
from bench.images import BenchImage

if TYPE_CHECKING:
    import torch

    from inference_consumer.model import CaptionModel
    from inference_consumer.stages import StageSink


@dataclass(frozen=True)
class ReferenceRun:
    prep_ms: float  # JPEG decode + preprocess
    total_ms: float  # ... + caption


@dataclass(frozen=True)
class DecoderCheck:
    decoder: str  # the decoder the service runs (CAPTIONER_DECODER)
    identical: bool


@contextmanager
def caption_model(model_dir: Path, *, threads: int, **overrides: str) -> Iterator[CaptionModel]:
    """The model as a worker loads it (its settings from the environment, this model directory, and any
    overrides such as dtype or device), with the worker's thread count; released on exit."""
    from inference_consumer.model import configure_torch_threads, load_caption_model

    configure_torch_threads(threads)
    model = load_caption_model(worker_settings(model=str(model_dir), **overrides))
    try:
        yield model
    finally:
        del model
        gc.collect()


def measure_ceiling(
    model_dir: Path,
    image: BenchImage,
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    threads: int,
    batch: int,
    dtype: str = "float32",
    processes: int = 1,
) -> Ceiling:
    """The machine's sgemm rate on the worker's thread count, one image's caption FLOPs, and the matrix
    kernels of one batch of `batch` images replayed alone in the model's own `dtype` and linear path
    (bench/ceiling.py), for `processes` workers of `threads` each."""
    machine = describe_machine(threads)
    with caption_model(model_dir, threads=threads, dtype=dtype) as model:
        pixels = worker_pixels(model, image.data)
        gflop = model_gflop_per_image(
            model, pixels, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens
        )
        kernels = kernel_time(
            model, [pixels] * batch, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens
        )
    return Ceiling(machine=machine, model_gflop_per_img=gflop, kernels=kernels, processes=processes)


def count_same_titles(
    model_dir: Path, images: list[BenchImage], *, max_new_tokens: int, threads: int, dtype: str
) -> int:
    """How many of `images` get the same title in `dtype` as in float32, one image at a time."""
    titles: dict[str, list[str]] = {}
    for each in ("float32", dtype):
        with caption_model(model_dir, threads=threads, dtype=each) as model:
            titles[each] = [
                model.caption([worker_pixels(model, image.data)], max_new_tokens=[max_new_tokens])[0]
                for image in images
            ]
    return sum(a == b for a, b in zip(titles["float32"], titles[dtype], strict=True))


def check_decoders(
    model_dir: Path,
    batches: Sequence[list[BenchImage]],
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    threads: int,
) -> DecoderCheck:
    with caption_model(model_dir, threads=threads) as model:
        identical = all(
            decoders_agree(model, images, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
            for images in batches
        )
    return DecoderCheck(decoder=worker_settings(model=str(model_dir)).decoder, identical=identical)


def decoders_agree(
    model: CaptionModel, images: list[BenchImage], *, max_new_tokens: int, min_new_tokens: int
) -> bool:
    """Fast and HF decoders give the same token ids for one batch, both free-length (min 0, where rows
    finish early and are dropped) and with the benchmark's forced length."""
    import torch

    from inference_consumer.decoding import build_decoder

    pixels = torch.stack([worker_pixels(model, image.data) for image in images])
    pixels = pixels.to(device=model.device, dtype=model.dtype)
    reference, fast = build_decoder("hf", model.model), build_decoder("fast", model.model)
    for minimum in sorted({0, min_new_tokens}):
        expected = reference.generate(pixels, max_new_tokens=max_new_tokens, min_new_tokens=minimum)
        actual = fast.generate(pixels, max_new_tokens=max_new_tokens, min_new_tokens=minimum)
        if expected.shape != actual.shape or not torch.equal(expected, actual):
            return False
    return True


@contextmanager
def reference_runner(
    model_dir: Path, image: BenchImage, *, max_new_tokens: int, min_new_tokens: int, threads: int
) -> Iterator[Callable[[], ReferenceRun]]:
    """A callable that runs the worker's work for `image` once, in-process, and returns its timings."""
    from core.settings import ImageSettings, WorkerSettings, load_settings
    from inference_consumer.allocator import keep_freed_memory

    settings = load_settings(WorkerSettings)
    max_pixels = load_settings(ImageSettings).max_image_pixels
    keep_freed_memory(settings.malloc_threshold_mb * 2**20)  # as the worker does (after the naive loop)
    with caption_model(model_dir, threads=threads) as model:

        def run_ms() -> ReferenceRun:
            started = time.perf_counter()
            pixels = worker_pixels(model, image.data, max_pixels=max_pixels)
            prepared = time.perf_counter()
            model.caption([pixels], max_new_tokens=[max_new_tokens], min_new_tokens=min_new_tokens)
            return ReferenceRun(
                prep_ms=(prepared - started) * 1000, total_ms=(time.perf_counter() - started) * 1000
            )

        run_ms()  # warm-up: first-call allocations and kernel selection
        yield run_ms


BATCH_REPEATS = 3  # timed batches, each followed by a round of its kernels replayed alone


@dataclass(frozen=True)
class BatchRun:
    """One full batch through the worker's own model code, in-process: the best of BATCH_REPEATS calls.
    For `processes` workers, each on cores of its own, the rate is one process's that many times over."""

    batch: int
    seconds: float
    # each stage's best over the same calls (inference_consumer/stages.py), as the model told them
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    processes: int = 1

    @property
    def img_s(self) -> float:
        return self.processes * self.batch / self.seconds


@dataclass(frozen=True)
class InProcessRun:
    """The batch through the model's own code, and the ceiling from the same batch's kernels."""

    ceiling: Ceiling
    batch: BatchRun


def measure_in_process(
    model_dir: Path,
    images: list[BenchImage],
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    threads: int,
    batch: int,
    processes: int = 1,
) -> InProcessRun:
    """`CaptionModel.caption` on `batch` of the photos (the mix repeated to fill it), with the worker's
    thread count and malloc thresholds: the best the service could do on this machine with nothing beside
    the model, what `make bench` compares the service with. And the ceiling: the matrix kernels that batch
    makes, replayed alone (bench/ceiling.py), a replay round after each timed batch, so that the batch and
    its kernels see the same machine and each stage's share of its kernels stays at or below 1. With
    `processes` workers of `threads` each, both rates count that many such processes, each alone on its
    cores."""
    from core.settings import WorkerSettings, load_settings
    from inference_consumer.allocator import keep_freed_memory

    keep_freed_memory(load_settings(WorkerSettings).malloc_threshold_mb * 2**20)  # as the worker does
    machine = describe_machine(threads)
    with caption_model(model_dir, threads=threads) as model:
        photos = itertools.islice(itertools.cycle(images), batch)
        pixels = [worker_pixels(model, image.data) for image in photos]
        limits = [max_new_tokens] * batch

        def caption(on_stage: StageSink | None = None) -> None:
            model.caption(pixels, max_new_tokens=limits, min_new_tokens=min_new_tokens, on_stage=on_stage)

        gflop = model_gflop_per_image(
            model, pixels[0], max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens
        )
        replay = KernelReplay(record_kernels_by_stage(caption))
        stage_runs: dict[str, list[float]] = {}

        def stage_ended(stage: str, seconds: float) -> None:
            stage_runs.setdefault(stage, []).append(seconds)

        def seconds() -> float:
            started = time.perf_counter()
            caption(stage_ended)
            return time.perf_counter() - started

        caption()  # warm-up: first-call allocations and kernel selection
        runs = []
        for _ in range(BATCH_REPEATS):
            runs.append(seconds())
            replay.round()
        kernels = replay.kernel_time(dtype=str(model.dtype).removeprefix("torch."), batch=batch)
    return InProcessRun(
        ceiling=Ceiling(machine=machine, model_gflop_per_img=gflop, kernels=kernels, processes=processes),
        batch=BatchRun(
            batch=batch,
            seconds=min(runs),
            stage_seconds={stage: min(times) for stage, times in stage_runs.items()},
            processes=processes,
        ),
    )


def worker_pixels(model: CaptionModel, data: bytes, *, max_pixels: int = 10**9) -> torch.Tensor:
    """What a worker's decode pool makes of an image."""
    return model.pixels(data, max_pixels=max_pixels)
