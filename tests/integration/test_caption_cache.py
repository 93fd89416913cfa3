"""The caption cache against a real broker, real worker and real API processes: an identical image gets the
earlier title without a job, a cached answer equals a fresh one, and API instances read the topic."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from core.cache_keys import cache_key
from core.model_id import public_model_id
from core.settings import TopicSettings
from schemas import CACHE_ENTRY_CODEC
from tests.conftest import StartApi, StartWorker
from tests.support.images import ReferenceCaptioner, make_image_bytes, reference_captioner
from tests.support.kafka import caption_request, end_offsets, publish_request, read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREDICT = "/api/v1/predictions"
CACHE_ON = {"CAPTIONER_CACHE_ENABLED": "true"}
# Fields a cached answer must carry over from the fresh one unchanged.
ORIGINAL_FIELDS = ("title", "model", "worker_id", "attempt", "inference_ms")


def caption(url: str, image: bytes, **headers: str) -> dict[str, Any]:
    response = requests.post(
        url + PREDICT, data=image, headers={"Content-Type": "image/png", **headers}, timeout=60
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def cache_entries(url: str) -> float:
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("captioner_api_cache_entries "):
            return float(line.split()[1])
    return 0.0


def wait_for(condition: Callable[[], bool], what: str, *, deadline_s: float = 60.0) -> None:
    give_up = time.monotonic() + deadline_s
    while not condition():  # the API's reader thread has no event a test can wait on
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.1)


def requests_published(bootstrap: str, topics: TopicSettings) -> int:
    return sum(end_offsets(bootstrap, topics.requests, topics.request_partitions).values())


def test_an_identical_image_gets_the_earlier_title_without_a_job(
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
) -> None:
    start_worker(**CACHE_ON)
    api = start_api(**CACHE_ON)
    image = make_image_bytes("PNG", seed=21)

    fresh = caption(api.url, image)
    assert fresh["cached"] is False
    assert fresh["title"] == reference_captioner(tiny_model_dir).caption(image)
    wait_for(lambda: cache_entries(api.url) >= 1, "the worker's entry to reach the API")

    published = requests_published(kafka_bootstrap, topics)
    cached = caption(api.url, image)
    assert requests_published(kafka_bootstrap, topics) == published  # no job: no inference
    assert cached["cached"] is True
    assert {name: cached[name] for name in ORIGINAL_FIELDS} == {name: fresh[name] for name in ORIGINAL_FIELDS}
    assert cached["id"] != fresh["id"] and cached.keys() == fresh.keys()

    for opt_out in ({"Cache-Control": "no-cache"}, {"X-Captioner-Cache": "bypass"}):
        again = caption(api.url, image, **opt_out)
        assert again["cached"] is False and again["title"] == fresh["title"]
    assert requests_published(kafka_bootstrap, topics) == published + 2


def test_instances_read_the_topic_and_the_token_limit_is_part_of_the_key(
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
) -> None:
    start_worker(**CACHE_ON)
    first_api = start_api(**CACHE_ON)
    short_api = start_api(**CACHE_ON, CAPTIONER_MAX_NEW_TOKENS="3")  # looks titles up under limit 3
    image = make_image_bytes("PNG", seed=22)
    fresh = caption(first_api.url, image)
    wait_for(lambda: cache_entries(short_api.url) >= 1, "the entry to reach the other instance")

    published = requests_published(kafka_bootstrap, topics)
    miss = caption(short_api.url, image)  # an entry under limit 20 is not one under 3
    assert (
        miss["cached"] is False and miss["title"] == fresh["title"]
    )  # the job itself leaves the limit at 20
    assert requests_published(kafka_bootstrap, topics) == published + 1

    # Another system asks for at most 3 tokens: the worker's entry sits under limit 3.
    publish_request(
        kafka_bootstrap,
        topics.requests,
        caption_request(image, reply_topic=topics.replies, reply_partition=3, max_new_tokens=3),
    )
    sha = hashlib.sha256(image).hexdigest()
    # Workers file entries under the model's public id (the directory's name), never its path.
    short_key = cache_key(image_sha256=sha, model=public_model_id(str(tiny_model_dir)), max_new_tokens=3)
    [entry] = [
        CACHE_ENTRY_CODEC.decode(record.value)
        for record in read_until(
            kafka_bootstrap, topics.captions, lambda seen: short_key in [r.key for r in seen]
        )
        if record.key == short_key
    ]
    short_title = ReferenceCaptioner(tiny_model_dir, max_new_tokens=3).caption(image)
    assert entry.title == short_title
    wait_for(lambda: cache_entries(short_api.url) >= 2, "the reader to follow the topic")
    published = requests_published(kafka_bootstrap, topics)
    short = caption(short_api.url, image)
    assert short["cached"] is True and short["title"] == short_title

    later_api = start_api(**CACHE_ON)  # reads the topic from its start before it serves
    later = caption(later_api.url, image)
    assert later["cached"] is True  # the latest answer under limit 20: the miss's, which replaced the first
    assert {name: later[name] for name in ORIGINAL_FIELDS} == {name: miss[name] for name in ORIGINAL_FIELDS}
    assert requests_published(kafka_bootstrap, topics) == published
