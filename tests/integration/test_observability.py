"""Readiness and metrics against a real broker: the API says ready only once a worker holds request
partitions, and a worker's /metrics shows one real job's timings, outcome, lag and partitions."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from core.settings import TopicSettings
from inference_consumer.stages import STAGES
from tests.conftest import StartApi, StartWorker
from tests.integration.test_pipeline import post_image
from tests.support.images import make_image_bytes
from tests.support.services import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMINGS = ("queue", "decode", "inference", "job_inference", "reply")


def test_the_api_is_ready_only_once_a_worker_holds_request_partitions(
    start_api: StartApi, start_worker: StartWorker
) -> None:
    api = start_api(wait_for_worker=False)
    before = api.readiness()
    assert before["status"] == "not_ready", before
    assert before["checks"]["workers"]["ok"] is False
    assert before["checks"]["workers"]["reason"] == "no worker holds request partitions yet"
    assert requests.get(api.url + "/readyz", timeout=10).status_code == 503

    start_worker()

    after = wait_until(lambda: api.ready() and api.readiness(), timeout_s=60, message=lambda: api.readiness())
    assert after["checks"]["workers"]["assigned"] == 1


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(url, timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_exports_one_jobs_timings_outcome_lag_and_partitions(
    start_api: StartApi, start_worker: StartWorker, topics: TopicSettings
) -> None:
    port = free_port()
    start_worker(CAPTIONER_WORKER_METRICS_PORT=str(port))
    api = start_api()

    assert post_image(api.url, make_image_bytes("PNG", seed=3)).status_code == 200

    metrics_url = f"http://127.0.0.1:{port}/metrics"

    def everything_exported() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        found = samples(metrics_url)
        names = {name for name, _ in found}
        lag = [labels for name, labels in found if name == "captioner_worker_consumer_lag"]
        complete = (
            all(
                found.get((f"captioner_worker_{timing}_seconds_count", frozenset()), 0) >= 1
                for timing in TIMINGS
            )
            and found.get(("captioner_worker_jobs_total", frozenset({("outcome", "succeeded")})), 0) >= 1
            and any(("topic", topics.requests) in labels for labels in lag)
            and "captioner_worker_dlq_depth" in names
            and all(_stage_seconds(found).get(stage, 0) > 0 for stage in RAN_STAGES)
        )
        return found if complete else None

    found = wait_until(everything_exported, timeout_s=60, message=lambda: sorted(samples(metrics_url))[:80])
    assert found[("captioner_worker_batch_size_count", frozenset())] >= 1
    assert found[("captioner_worker_assigned_partitions", frozenset({("topic", topics.requests)}))] == 6
    assert found[("captioner_worker_dlq_depth", frozenset())] == 0
    assert set(_stage_seconds(found)) == set(STAGES)


# Where the worker's time went: each stage a fast-decoder batch and its image go through.
RAN_STAGES = (
    "image_decode",
    "preprocess",
    "staging",
    "image_encoder",
    "prefill",
    "decoding_steps",
    "publish",
)


def _stage_seconds(found: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    return {
        dict(labels)["stage"]: value
        for (name, labels), value in found.items()
        if name == "captioner_worker_stage_seconds_total"
    }
