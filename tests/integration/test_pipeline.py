"""The whole request path against a real broker: API process -> Kafka -> worker process -> API."""

from __future__ import annotations

import base64
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from core.settings import TopicSettings
from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionRequest, ReplyStatus
from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import Record, read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREDICT = "/api/v1/predictions"


def post_image(url: str, data: bytes, *, how: str = "json", timeout: float = 30) -> requests.Response:
    if how == "json":
        return requests.post(url + PREDICT, json={"image": base64.b64encode(data).decode()}, timeout=timeout)
    if how == "multipart":
        return requests.post(url + PREDICT, files={"image": ("picture", data)}, timeout=timeout)
    return requests.post(url + PREDICT, data=data, headers={"Content-Type": how}, timeout=timeout)


@pytest.mark.parametrize(
    ("image_format", "how"),
    [("JPEG", "json"), ("PNG", "json"), ("JPEG", "multipart"), ("PNG", "image/png"), ("JPEG", "image/jpeg")],
)
def test_title_equals_plain_generate(
    start_worker: StartWorker, start_api: StartApi, tiny_model_dir: Path, image_format: str, how: str
) -> None:
    start_worker()
    api = start_api()
    image = make_image_bytes(image_format, seed=7)

    response = post_image(api.url, image, how=how)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["title"] == reference_captioner(tiny_model_dir).caption(image)
    assert body["title"]
    assert len(body["id"]) == 32
    assert body["model"] == tiny_model_dir.name  # the public id, never the server's path
    assert str(tiny_model_dir.parent) not in response.text


def test_health_and_readiness(start_api: StartApi) -> None:
    api = start_api(wait_for_worker=False)

    assert requests.get(api.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(api.url + "/readyz", timeout=5)
    checks = ready.json()["checks"]
    assert checks["reply_listener"] == {"ok": True, "partition": 0}
    assert checks["broker"] == {"ok": True}
    assert ready.status_code == 503  # no worker yet (test_readiness_waits_for_a_worker)


BAD_INPUTS = [
    pytest.param(
        {"data": b'{"image": ', "headers": {"Content-Type": "application/json"}},
        400,
        "malformed_request",
        id="malformed-json",
    ),
    pytest.param({"json": {"image": "%%% not base64 %%%"}}, 400, "malformed_request", id="bad-base64"),
    pytest.param({"json": {"picture": "aGVsbG8="}}, 400, "malformed_request", id="missing-field"),
    pytest.param({"json": ["image"]}, 400, "malformed_request", id="json-not-object"),
    pytest.param(
        {"data": b"x" * (64 * 1024 + 10), "headers": {"Content-Type": "image/jpeg"}},
        413,
        "payload_too_large",
        id="too-large-raw",
    ),
    pytest.param(
        {"json": {"image": base64.b64encode(b"x" * (64 * 1024 + 10)).decode()}},
        413,
        "payload_too_large",
        id="too-large-json",
    ),
    pytest.param(
        {"data": b"hello", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
        id="text-plain",
    ),
    pytest.param(
        {"data": make_image_bytes("ICO"), "headers": {"Content-Type": "image/x-icon"}},
        415,
        "unsupported_media_type",
        id="unsupported-format",
    ),
    pytest.param(
        {"data": b"\xff\xd8\xff garbage", "headers": {"Content-Type": "image/jpeg"}},
        422,
        "invalid_image",
        id="garbage-jpeg",
    ),
    pytest.param(
        {"json": {"image": base64.b64encode(b"hello world").decode()}},
        422,
        "invalid_image",
        id="base64-not-image",
    ),
    pytest.param({"files": {"picture": ("p", b"x")}}, 400, "malformed_request", id="multipart-no-image"),
]


def test_bad_inputs_get_json_errors(start_worker: StartWorker, start_api: StartApi) -> None:
    start_worker()
    api = start_api(CAPTIONER_API_MAX_IMAGE_BYTES=str(64 * 1024))
    for case in BAD_INPUTS:
        kwargs, status, code = case.values
        response = requests.post(api.url + PREDICT, timeout=30, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (case.id, response.text)
        assert response.json()["error"]["code"] == code, case.id
        assert response.headers["Content-Type"].startswith("application/json")
    # Bad input cost nobody else anything: a good request still works.
    good = post_image(api.url, make_image_bytes("PNG", seed=3))
    assert good.status_code == 200, good.text


def test_two_api_instances_answer_their_own_requests(
    start_worker: StartWorker, start_api: StartApi, tiny_model_dir: Path
) -> None:
    start_worker()
    apis = [start_api(), start_api()]
    images = [make_image_bytes("JPEG", seed=seed) for seed in range(24)]
    expected = reference_captioner(tiny_model_dir).captions(images)
    assert len(set(expected)) > 1, "the images must be told apart by their titles"

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(lambda i: post_image(apis[i % 2].url, images[i]), range(len(images))))

    assert [r.status_code for r in responses] == [200] * len(images)
    assert [r.json()["title"] for r in responses] == expected
    # Each instance read only the replies to its own requests: one meant for the other instance (both
    # reading one partition, say), or one that reached it twice, is counted as unclaimed.
    assert [unclaimed_replies(api.url) for api in apis] == [0.0, 0.0]


def unclaimed_replies(url: str) -> float | None:
    """The instance's count of replies nobody there waited for; None when it does not report one."""
    text = requests.get(url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "captioner_api_replies_unclaimed_total":
                return float(sample.value)
    return None


def test_record_from_another_system_gets_its_reply(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str, tiny_model_dir: Path
) -> None:
    """A plain confluent-kafka producer publishes a hand-built record; the reply lands on its own topic."""
    start_worker()
    result_topic = topics.replies  # an existing topic of the caller's choosing
    image = make_image_bytes("PNG", seed=11)
    correlation_id = f"external-{uuid.uuid4()}"
    now = datetime.now(UTC)
    record = CaptionRequest(
        correlation_id=correlation_id,
        image=image,
        content_type="image/png",
        reply_topic=result_topic,
        deadline=now + timedelta(seconds=60),
        created_at=now,
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.requests, key=correlation_id.encode(), value=REQUEST_CODEC.encode(record))
    assert producer.flush(10) == 0

    def answered(seen: list[Record]) -> bool:
        return any(found.key == correlation_id.encode() for found in seen)

    [reply] = [
        REPLY_CODEC.decode(found.value)
        for found in read_until(kafka_bootstrap, result_topic, answered, timeout_s=60)
        if found.key == correlation_id.encode()
    ]
    assert reply.correlation_id == correlation_id
    assert reply.status is ReplyStatus.SUCCEEDED
    assert reply.title == reference_captioner(tiny_model_dir).caption(image)


def test_no_worker_means_a_json_504_after_the_timeout(start_api: StartApi) -> None:
    api = start_api(wait_for_worker=False, CAPTIONER_API_REQUEST_TIMEOUT_S="1.5")

    response = post_image(api.url, make_image_bytes("PNG"))

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert response.json()["error"]["retrying"] is False


def test_sigterm_stops_api_and_worker_gracefully(start_worker: StartWorker, start_api: StartApi) -> None:
    worker = start_worker()
    api = start_api()
    assert post_image(api.url, make_image_bytes("PNG")).status_code == 200

    assert api.stop(timeout_s=20) == 0
    assert worker.stop(timeout_s=40) == 0


def test_tensor_image_pipeline_worker_answers_like_the_pil_path(
    start_worker: StartWorker, start_api: StartApi, tiny_model_dir: Path
) -> None:
    """CAPTIONER_IMAGE_PIPELINE=tensor on the CPU: the code a GPU worker runs, batched on the device."""
    start_worker(CAPTIONER_IMAGE_PIPELINE="tensor", CAPTIONER_DECODE_THREADS="1")
    api = start_api()
    jpeg = make_image_bytes("JPEG", seed=11)
    images = [
        jpeg,
        make_image_bytes("PNG", seed=12),
        make_image_bytes("JPEG", seed=13),
        jpeg[: len(jpeg) // 2],
    ]

    with ThreadPoolExecutor(len(images)) as pool:
        responses = list(pool.map(lambda data: post_image(api.url, data), images))

    expected = reference_captioner(tiny_model_dir).captions(images[:3])
    assert [response.json().get("title") for response in responses[:3]] == expected
    assert responses[3].status_code == 422
    assert responses[3].json()["error"]["code"] == "invalid_image"
