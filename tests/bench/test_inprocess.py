"""The in-process batch and the ceiling are measured together: each timed batch is followed by a round of
its own kernels replayed alone, so that both see the same machine."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.ceiling import KernelReplay
from bench.images import make_images
from bench.inprocess import BATCH_REPEATS, measure_in_process
from inference_consumer.model import CaptionModel
from tests.bench.conftest import Environment


@pytest.fixture
def worker_environment(environment: Environment) -> Iterator[None]:
    """The worker's settings as a test process may take them: glibc's malloc left as it is."""
    environment(CAPTIONER_MALLOC_THRESHOLD_MB="0", CAPTIONER_DEVICE="cpu")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_each_timed_batch_is_followed_by_a_round_of_its_kernels(
    tiny_model_dir: Path, worker_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    caption, replay_round = CaptionModel.caption, KernelReplay.round

    def logged_caption(self: CaptionModel, *args: object, **kwargs: object) -> list[str]:
        events.append("batch")
        return caption(self, *args, **kwargs)  # type: ignore[arg-type]

    def logged_round(self: KernelReplay) -> None:
        events.append("kernels")
        replay_round(self)

    monkeypatch.setattr(CaptionModel, "caption", logged_caption)
    monkeypatch.setattr(KernelReplay, "round", logged_round)

    measure_in_process(tiny_model_dir, make_images(2), max_new_tokens=5, min_new_tokens=5, threads=1, batch=3)

    # the recording run and a warm-up, then timed batches each followed by its kernels replayed
    assert events[-2 * BATCH_REPEATS :] == ["batch", "kernels"] * BATCH_REPEATS
    assert events[: -2 * BATCH_REPEATS].count("kernels") == 0


def test_the_ceiling_is_the_measured_batchs_own_kernels(
    tiny_model_dir: Path, worker_environment: None
) -> None:
    run = measure_in_process(
        tiny_model_dir, make_images(2), max_new_tokens=5, min_new_tokens=5, threads=1, batch=3
    )

    kernels, batch = run.ceiling.kernels, run.batch
    assert kernels.batch == batch.batch == 3 and kernels.dtype == "float32"
    stages = {"image_encoder", "prefill", "decoding_steps"}
    assert set(kernels.stage_seconds) == stages <= set(batch.stage_seconds)
    figures = [kernels.seconds, batch.seconds, *kernels.stage_seconds.values(), *batch.stage_seconds.values()]
    assert all(math.isfinite(value) and value > 0 for value in figures)
    assert 0 < kernels.distinct < kernels.calls
    assert run.ceiling.model_gflop_per_img > 0 and run.ceiling.machine.sgemm_gflops > 0


def test_for_several_workers_both_rates_count_each_on_its_own_cores(
    tiny_model_dir: Path, worker_environment: None
) -> None:
    """WORKERS=2: one process of the workers' thread count is measured, and the machine holds two."""
    run = measure_in_process(
        tiny_model_dir, make_images(2), max_new_tokens=5, min_new_tokens=5, threads=1, batch=3, processes=2
    )

    assert run.batch.img_s == pytest.approx(2 * 3 / run.batch.seconds)
    assert run.ceiling.img_s == pytest.approx(2 * run.ceiling.kernels.img_s)
    kernels_alone = run.ceiling.kernels.seconds / run.batch.seconds
    assert run.ceiling.share(run.batch.img_s) == pytest.approx(kernels_alone)
