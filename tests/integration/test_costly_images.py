"""Images that would cost far more time than their pixels need, against a real broker and real `captioner
api` and `captioner worker` processes: refused at once (422 image_too_costly; a dead letter on Kafka),
and the requests around them are answered as usual."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from core.image_structure import JPEG_MAX_SCANS
from core.settings import TopicSettings
from schemas import REPLY_CODEC, REQUEST_CODEC, ReplyStatus
from schemas import headers as record_headers
from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes, reference_captioner, scan_bomb
from tests.support.kafka import Record, caption_request, publish_request, read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREDICT = "/api/v1/predictions"
ORDINARY = 6


def post(url: str, image: bytes) -> requests.Response:
    return requests.post(url + PREDICT, json={"image": base64.b64encode(image).decode()}, timeout=60)


def test_the_api_refuses_a_scan_bomb_at_once_and_ordinary_requests_right_after_are_answered(
    start_worker: StartWorker, start_api: StartApi, tiny_model_dir: Path
) -> None:
    start_worker()
    api = start_api()
    bomb = scan_bomb()  # 4000x4000 grey, 10,006 scans: about 100 s of one core's decoding, before
    ordinary = [make_image_bytes("PNG", seed=seed) for seed in range(ORDINARY)]

    with ThreadPoolExecutor(3 + ORDINARY) as pool:
        bombs = [pool.submit(post, api.url, bomb) for _ in range(3)]
        answers = [pool.submit(post, api.url, image) for image in ordinary]
        refused = [future.result() for future in bombs]
        answered = [future.result() for future in answers]

    for response in refused:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "image_too_costly"
        assert f"more than {JPEG_MAX_SCANS} scans" in response.json()["error"]["message"]
    assert [response.status_code for response in answered] == [200] * ORDINARY, [r.text for r in answered]
    reference = reference_captioner(tiny_model_dir)
    assert [response.json()["title"] for response in answered] == [
        reference.caption(image) for image in ordinary
    ]


def by_key(records: list[Record], key: str) -> list[Record]:
    return [record for record in records if record.key == key.encode()]


def test_a_scan_bomb_published_to_kafka_is_dead_lettered_and_the_job_behind_it_is_answered(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str, tiny_model_dir: Path
) -> None:
    start_worker()
    bomb = caption_request(scan_bomb(), reply_topic=topics.replies)
    image = make_image_bytes("JPEG", seed=21)
    behind = caption_request(image, reply_topic=topics.replies)
    publish_request(kafka_bootstrap, topics.requests, bomb, partition=3)
    publish_request(kafka_bootstrap, topics.requests, behind, partition=3)

    [dead] = read_until(kafka_bootstrap, topics.dead_letter, lambda records: len(records) >= 1)
    replies = read_until(
        kafka_bootstrap,
        topics.replies,
        lambda seen: bool(by_key(seen, bomb.correlation_id) and by_key(seen, behind.correlation_id)),
    )

    assert dead.headers[record_headers.DLQ_ERROR_CODE] == b"image_too_costly"
    assert dead.headers[record_headers.ORIGINAL_PARTITION] == b"3"
    assert REQUEST_CODEC.decode(dead.value).correlation_id == bomb.correlation_id
    [refusal] = [REPLY_CODEC.decode(record.value) for record in by_key(replies, bomb.correlation_id)]
    assert refusal.status is ReplyStatus.FAILED
    assert refusal.error is not None and refusal.error.code == "image_too_costly"
    [answer] = [REPLY_CODEC.decode(record.value) for record in by_key(replies, behind.correlation_id)]
    assert answer.status is ReplyStatus.SUCCEEDED
    assert answer.title == reference_captioner(tiny_model_dir).caption(image)


def test_an_image_still_decoding_after_the_workers_bound_fails_and_the_partition_goes_on(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str, tiny_model_dir: Path
) -> None:
    """Within every structural limit but slower to decode than the bound this worker is given: 24 MP of
    colour in as many scans as a JPEG may have."""
    start_worker(CAPTIONER_DECODE_TIMEOUT_S="0.5")
    slow_image = scan_bomb(4898, 4898, scans=JPEG_MAX_SCANS, mode="RGB", color=(9, 99, 199), subsampling=0)
    slow = caption_request(slow_image, reply_topic=topics.replies)
    image = make_image_bytes("PNG", seed=22)
    behind = caption_request(image, reply_topic=topics.replies)
    publish_request(kafka_bootstrap, topics.requests, slow, partition=4)
    publish_request(kafka_bootstrap, topics.requests, behind, partition=4)

    [dead] = read_until(kafka_bootstrap, topics.dead_letter, lambda records: len(records) >= 1)
    replies = read_until(
        kafka_bootstrap, topics.replies, lambda seen: bool(by_key(seen, behind.correlation_id))
    )

    assert dead.headers[record_headers.DLQ_ERROR_CODE] == b"image_too_costly"
    assert b"to decode" in dead.headers[record_headers.DLQ_ERROR_MESSAGE]  # the bound, not a structural limit
    assert REQUEST_CODEC.decode(dead.value).correlation_id == slow.correlation_id
    [answer] = [REPLY_CODEC.decode(record.value) for record in by_key(replies, behind.correlation_id)]
    assert answer.status is ReplyStatus.SUCCEEDED
    assert answer.title == reference_captioner(tiny_model_dir).caption(image)
