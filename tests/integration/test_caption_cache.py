"""The caption cache against a real broker, real worker and real API processes: an identical image gets the
earlier title without a job, a cached answer equals a fresh one, API instances read the topic, entries
nobody's workers signed are never served, and per-key scopes keep API keys' callers apart."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from core.cache_keys import entry_key
from core.cache_signing import load_signer
from core.settings import TopicSettings
from schemas import CACHE_ENTRY_CODEC, CaptionCacheEntry
from schemas.headers import CACHE_SIGNATURE_KEY_ID
from tests.conftest import StartApi, StartWorker
from tests.support.cache_entries import make_entry, new_signer, signed
from tests.support.images import ReferenceCaptioner, make_image_bytes, reference_captioner
from tests.support.kafka import Record, caption_request, end_offsets, publish, publish_request, read_until

# Two callers' API keys (the API takes keys of 32 characters or more).
KEY_A, KEY_B = "a" * 32 + "-caller", "b" * 32 + "-caller"

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREDICT = "/api/v1/predictions"
# Fields a cached answer must carry over from the fresh one unchanged.
ORIGINAL_FIELDS = ("title", "model", "worker_id", "attempt", "inference_ms")


def caption(url: str, image: bytes, **headers: str) -> dict[str, Any]:
    response = requests.post(
        url + PREDICT, data=image, headers={"Content-Type": "image/png", **headers}, timeout=60
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def metric(url: str, sample: str) -> float:
    """One sample of the API's /metrics, by its name and labels as printed; 0 when absent."""
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def skipped(url: str, reason: str) -> float:
    return metric(url, f'captioner_api_cache_reader_errors_total{{reason="{reason}"}}')


def publish_and_see_skipped(url: str, reason: str, publish_record: Callable[[], None]) -> None:
    before = skipped(url, reason)
    publish_record()
    wait_for(lambda: skipped(url, reason) > before, f"the API to read and skip the {reason} record")


def cache_entries(url: str) -> float:
    return metric(url, "captioner_api_cache_entries")


def wait_for(condition: Callable[[], bool], what: str, *, deadline_s: float = 60.0) -> None:
    give_up = time.monotonic() + deadline_s
    while not condition():  # the API's reader thread has no event a test can wait on
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.1)


def requests_published(bootstrap: str, topics: TopicSettings) -> int:
    return sum(end_offsets(bootstrap, topics.requests, topics.request_partitions).values())


def cache_records(
    bootstrap: str, topics: TopicSettings, done: Callable[[list[Record]], bool]
) -> list[Record]:
    return read_until(bootstrap, topics.captions, done)


def test_an_identical_image_gets_the_earlier_title_without_a_job(
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    cache_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    worker_env, api_env = cache_env
    start_worker(**worker_env)
    api = start_api(**api_env)
    image = make_image_bytes("PNG", seed=21)

    fresh = caption(api.url, image)
    assert fresh["cached"] is False
    assert fresh["title"] == reference_captioner(tiny_model_dir).caption(image)
    wait_for(lambda: cache_entries(api.url) >= 1, "the worker's signed entry to reach the API")

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
    cache_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    worker_env, api_env = cache_env
    start_worker(**worker_env)
    first_api = start_api(**api_env)
    short_api = start_api(**api_env, CAPTIONER_MAX_NEW_TOKENS="3")  # serves titles of limit 3 only
    image = make_image_bytes("PNG", seed=22)
    fresh = caption(first_api.url, image)
    wait_for(lambda: cache_entries(first_api.url) >= 1, "the entry to reach the first instance")
    ignored = 'captioner_api_cache_ignored_total{reason="other_profile"}'
    wait_for(lambda: metric(short_api.url, ignored) >= 1, "the other instance to read and leave it")

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

    def short_entries(seen: list[Record]) -> list[CaptionCacheEntry]:
        entries = [CACHE_ENTRY_CODEC.decode(record.value) for record in seen]
        return [entry for entry in entries if entry.max_new_tokens == 3]

    [entry] = short_entries(cache_records(kafka_bootstrap, topics, lambda seen: bool(short_entries(seen))))
    # Workers file entries under the model's public id (the directory's name), never its path.
    assert entry.model == tiny_model_dir.name
    assert entry.title == ReferenceCaptioner(tiny_model_dir, max_new_tokens=3).caption(image)
    wait_for(lambda: cache_entries(short_api.url) >= 1, "the reader to follow the topic")
    published = requests_published(kafka_bootstrap, topics)
    short = caption(short_api.url, image)
    assert short["cached"] is True and short["title"] == entry.title

    later_api = start_api(**api_env)  # reads the topic before it serves
    later = caption(later_api.url, image)
    assert later["cached"] is True  # the latest answer under limit 20: the miss's, which replaced the first
    assert {name: later[name] for name in ORIGINAL_FIELDS} == {name: miss[name] for name in ORIGINAL_FIELDS}
    assert requests_published(kafka_bootstrap, topics) == published


def test_entries_the_workers_did_not_sign_are_never_served(
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    cache_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    worker_env, api_env = cache_env
    start_worker(**worker_env)
    api = start_api(**api_env)
    caption(api.url, make_image_bytes("PNG", seed=23))
    # A worker's genuine record: forgeries copy its profile and key id, so only the signature tells.
    [genuine] = cache_records(kafka_bootstrap, topics, lambda seen: len(seen) >= 1)
    assert genuine.headers.keys() >= {"captioner.signature", CACHE_SIGNATURE_KEY_ID}

    image = make_image_bytes("PNG", seed=24)
    forged = replace(
        CACHE_ENTRY_CODEC.decode(genuine.value),
        image_sha256=hashlib.sha256(image).hexdigest(),
        title="a forged title",
    )
    key, value = entry_key(forged), CACHE_ENTRY_CODEC.encode(forged)
    attacker = new_signer()
    [attacker_signature, _] = attacker.headers(key, value)
    forgeries = {
        "unsigned": [],
        "unknown_key": attacker.headers(key, value),
        "bad_signature": [
            attacker_signature,
            (CACHE_SIGNATURE_KEY_ID, genuine.headers[CACHE_SIGNATURE_KEY_ID]),
        ],
    }
    for reason, headers in forgeries.items():
        forge = functools.partial(publish, kafka_bootstrap, topics.captions, value, key=key, headers=headers)
        publish_and_see_skipped(api.url, reason, forge)

    published = requests_published(kafka_bootstrap, topics)
    answer = caption(api.url, image)
    true_title = reference_captioner(tiny_model_dir).caption(image)
    assert answer["cached"] is False and answer["title"] == true_title != forged.title  # the worker's
    assert requests_published(kafka_bootstrap, topics) == published + 1

    # The control: the same record signed with the workers' own key is served, so the forgeries above
    # differed from a genuine record in their signature alone. (Guard that key.)
    wait_for(lambda: cache_entries(api.url) >= 2, "the worker's entry for the image")
    workers_key = load_signer(Path(worker_env["CAPTIONER_CACHE_SIGNING_KEY_FILE"]))
    publish(kafka_bootstrap, topics.captions, value, key=key, headers=workers_key.headers(key, value))
    wait_for(lambda: caption(api.url, image)["title"] == forged.title, "the signed record to be served")


def test_per_key_scopes_keep_two_api_keys_apart(
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    kafka_bootstrap: str,
    cache_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    worker_env, api_env = cache_env
    start_worker(**worker_env)
    api = start_api(**api_env, CAPTIONER_API_KEYS=f"{KEY_A},{KEY_B}", CAPTIONER_CACHE_SCOPE="per_key")
    image = make_image_bytes("PNG", seed=25)

    first = caption(api.url, image, **{"X-API-Key": KEY_A})
    wait_for(lambda: cache_entries(api.url) >= 1, "caller A's entry to reach the API")
    assert caption(api.url, image, **{"X-API-Key": KEY_A})["cached"] is True

    published = requests_published(kafka_bootstrap, topics)
    other = caption(api.url, image, **{"Authorization": f"Bearer {KEY_B}"})
    assert other["cached"] is False and other["title"] == first["title"]  # B learns nothing from A's
    assert requests_published(kafka_bootstrap, topics) == published + 1
    wait_for(lambda: cache_entries(api.url) >= 2, "caller B's own entry")
    assert caption(api.url, image, **{"X-API-Key": KEY_B})["cached"] is True
    scopes = {
        CACHE_ENTRY_CODEC.decode(record.value).scope
        for record in cache_records(kafka_bootstrap, topics, lambda seen: len(seen) >= 2)
    }
    assert len(scopes) == 2 and "shared" not in scopes


def test_a_start_reads_only_as_much_of_the_topic_as_the_lru_holds(
    start_api: StartApi,
    topics: TopicSettings,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    cache_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    worker_env, api_env = cache_env
    workers_key = load_signer(Path(worker_env["CAPTIONER_CACHE_SIGNING_KEY_FILE"]))
    older, newer = (
        make_entry(make_image_bytes("PNG", seed=seed), model=tiny_model_dir.name, title=f"title {seed}")
        for seed in (26, 27)
    )
    for entry in (older, newer):  # one after the other in one partition
        key, value, headers = signed(entry, workers_key)
        publish(kafka_bootstrap, topics.captions, value, key=key, headers=headers, partition=0)
    no_worker = {"CAPTIONER_API_READY_NEEDS_WORKER": "false"}

    # 6 entries over the topic's 6 partitions: the newest record of each partition, and nothing older.
    small = start_api(wait_for_worker=False, **api_env, **no_worker, CAPTIONER_API_CACHE_MAX_ENTRIES="6")
    wait_for(lambda: cache_entries(small.url) >= 1, "the newest entry")
    answer = caption(small.url, make_image_bytes("PNG", seed=27))
    assert answer["cached"] is True and answer["title"] == newer.title
    assert cache_entries(small.url) == 1  # the older entry was never read
    # The control: an instance that holds more reads both.
    large = start_api(wait_for_worker=False, **api_env, **no_worker)
    wait_for(lambda: cache_entries(large.url) >= 2, "both entries")
