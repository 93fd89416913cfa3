"""Real `captioner api` and `captioner worker` processes against a real broker, each exporting spans to
a JSON-lines file (CAPTIONER_TRACING=file:...) and logging JSON: one request is one trace across both,
and both processes' log lines about the job carry its correlation id and trace id."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from core.settings import TopicSettings
from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
# The SDK's own variable: export batches every 100 ms instead of 5 s, so the test waits less.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


def spans_of(path: Path, trace_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [span for span in spans if span["context"]["trace_id"] == f"0x{trace_id}"]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_one_request_is_one_trace_across_api_kafka_and_worker(
    start_worker: StartWorker, start_api: StartApi, topics: TopicSettings, tmp_path: Path
) -> None:
    api_spans, worker_spans = tmp_path / "api-spans.jsonl", tmp_path / "worker-spans.jsonl"
    worker = start_worker(
        CAPTIONER_TRACING=f"file:{worker_spans}", CAPTIONER_LOG_FORMAT="json", **FAST_EXPORT
    )
    api = start_api(CAPTIONER_TRACING=f"file:{api_spans}", CAPTIONER_LOG_FORMAT="json", **FAST_EXPORT)

    response = requests.post(
        api.url + "/api/v1/predictions",
        json={"image": base64.b64encode(make_image_bytes("PNG", seed=3)).decode()},
        headers={"traceparent": TRACEPARENT},
        timeout=30,
    )
    assert response.status_code == 200, response.text

    wanted = {
        "POST /api/v1/predictions",
        f"{topics.requests} publish",
        f"{topics.requests} process",
        "decode",
        "inference",
        f"{topics.replies} publish",
    }
    wait_until(
        lambda: (
            wanted
            <= {span["name"] for span in spans_of(api_spans, TRACE_ID) + spans_of(worker_spans, TRACE_ID)}
        ),
        timeout_s=30,
        message=lambda: (spans_of(api_spans, TRACE_ID), spans_of(worker_spans, TRACE_ID)),
    )
    by_name = {
        span["name"]: span for span in spans_of(api_spans, TRACE_ID) + spans_of(worker_spans, TRACE_ID)
    }
    assert by_name[f"{topics.requests} publish"]["resource"]["attributes"]["service.name"] == "captioner-api"
    assert (
        by_name[f"{topics.requests} process"]["resource"]["attributes"]["service.name"] == "captioner-worker"
    )
    # The Kafka hop: the worker's span is a child of the API's publish span.
    assert (
        by_name[f"{topics.requests} process"]["parent_id"]
        == by_name[f"{topics.requests} publish"]["context"]["span_id"]
    )

    # Both processes log JSON lines; a line with the job's correlation id carries its trace id too.
    correlation_id = response.json()["id"]
    lines = json_lines(worker.log()) + json_lines(api.log())
    assert json_lines(worker.log()) and json_lines(api.log())
    assert all(line["trace_id"] == TRACE_ID for line in lines if line.get("correlation_id") == correlation_id)
