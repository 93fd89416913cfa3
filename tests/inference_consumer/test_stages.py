"""A worker says where its time goes: each stage of a batch and of an image reports its seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from core.settings import WorkerSettings
from inference_consumer import stages
from inference_consumer.model import load_caption_model
from tests.support.images import encode, make_picture


def _collect() -> tuple[dict[str, float], stages.StageSink]:
    seen: dict[str, float] = {}

    def sink(stage: str, seconds: float) -> None:
        seen[stage] = seen.get(stage, 0.0) + seconds

    return seen, sink


@pytest.mark.parametrize(
    ("decoder", "expected"),
    [
        (
            "fast",
            {stages.STAGING, stages.IMAGE_ENCODER, stages.PREFILL, stages.DECODING_STEPS, stages.DETOKENIZE},
        ),
        ("hf", {stages.STAGING, stages.GENERATE, stages.DETOKENIZE}),
    ],
)
def test_a_batch_reports_each_of_its_stages(tiny_model_dir: Path, decoder: str, expected: set[str]) -> None:
    model = load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu", decoder=decoder))
    seen, sink = _collect()

    pixels = model.pixels(encode(make_picture(seed=3), "PNG"), max_pixels=10**7, on_stage=sink)
    model.caption([pixels, pixels], max_new_tokens=[5, 5], min_new_tokens=5, on_stage=sink)

    assert set(seen) == expected | {stages.IMAGE_DECODE, stages.PREPROCESS}
    assert all(seconds > 0 for seconds in seen.values())
    assert set(seen) <= set(stages.STAGES)


def test_timed_stages_add_to_the_workers_counter() -> None:
    def publish_seconds() -> float:
        value = REGISTRY.get_sample_value("captioner_worker_stage_seconds_total", {"stage": stages.PUBLISH})
        return value or 0.0

    before = publish_seconds()

    with stages.timed(stages.PUBLISH):
        sum(range(10_000))
    stages.record(stages.PUBLISH, 0.5)

    assert publish_seconds() > before + 0.5
