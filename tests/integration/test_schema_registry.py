"""The Schema Registry option against a real broker, a real registry (Apicurio's Confluent-compatible API)
and real worker and API processes: both framings answered on one request topic, each in its own; a
publisher's evolved schema served, an incompatible one refused; hostile ids dead-lettered without holding
up the partition; a hung registry costs a retry, not a wedge; the API and the caption cache in the
registry's framing; the DLQ tool reads it."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from core.settings import TopicSettings
from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionReply, ReplyStatus
from schemas import headers as names
from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import Record, caption_request, publish, publish_request, read_until
from tests.support.registry import LocalRegistry, Publisher, request_schema_text
from tests.support.services import CAPTIONER, service_env
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SINGLE_OBJECT_MARKER = b"\xc3\x01"
CONFLUENT_MARKER = b"\x00"
OPTIONAL_FIELD = {"name": "priority", "type": ["null", "int"], "default": None}
REQUIRED_FIELD = {"name": "tenant", "type": "string"}


def with_registry(registry: LocalRegistry, **more: str) -> dict[str, str]:
    return {"CAPTIONER_SCHEMA_REGISTRY_URL": registry.url, **more}


def final_reply(bootstrap: str, topic: str, correlation_id: str, publisher: Publisher) -> Record:
    """The reply record that ends a job (not a RETRYING notice)."""

    def ends(record: Record) -> bool:
        reply = read_reply(record, publisher)
        return reply.correlation_id == correlation_id and reply.status is not ReplyStatus.RETRYING

    records = read_until(bootstrap, topic, lambda seen: any(ends(record) for record in seen))
    return next(record for record in records if ends(record))


def read_reply(record: Record, publisher: Publisher) -> CaptionReply:
    """Either framing, the way a caller that knows both reads it: Confluent's deserializer for 0x00."""
    if record.value[:1] == CONFLUENT_MARKER:
        return publisher.reply(record.value)
    return REPLY_CODEC.decode(record.value)


def test_both_framings_on_one_request_topic_are_answered_each_in_its_own(
    start_worker: StartWorker,
    topics: TopicSettings,
    kafka_bootstrap: str,
    schema_registry: LocalRegistry,
    tiny_model_dir: Path,
) -> None:
    start_worker(**with_registry(schema_registry))
    publisher = Publisher(schema_registry.url)
    image = make_image_bytes("PNG", seed=31)
    plain = caption_request(image, reply_topic=topics.replies, reply_partition=0)
    framed = caption_request(image, reply_topic=topics.replies, reply_partition=0)
    publish_request(kafka_bootstrap, topics.requests, plain, partition=0)
    value = publisher.request_value(framed, topic=topics.requests)
    assert value[:1] == CONFLUENT_MARKER
    publish(kafka_bootstrap, topics.requests, value, key=framed.correlation_id.encode(), partition=0)

    plain_reply = final_reply(kafka_bootstrap, topics.replies, plain.correlation_id, publisher)
    framed_reply = final_reply(kafka_bootstrap, topics.replies, framed.correlation_id, publisher)

    expected = reference_captioner(tiny_model_dir).caption(image)
    assert plain_reply.value[:2] == SINGLE_OBJECT_MARKER
    assert framed_reply.value[:1] == CONFLUENT_MARKER
    for record in (plain_reply, framed_reply):
        reply = read_reply(record, publisher)
        assert (reply.status, reply.title) == (ReplyStatus.SUCCEEDED, expected)


def test_a_publishers_evolved_schema_is_served_and_an_incompatible_one_refused(
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    kafka_bootstrap: str,
    schema_registry: LocalRegistry,
    tiny_model_dir: Path,
) -> None:
    start_worker(**with_registry(schema_registry))
    start_api(**with_registry(schema_registry))  # sets BACKWARD on the request topic's subject
    publisher = Publisher(schema_registry.url)
    image = make_image_bytes("PNG", seed=32)
    request = caption_request(image, reply_topic=topics.replies, reply_partition=0)
    evolved = request_schema_text(**OPTIONAL_FIELD)
    value = publisher.request_value(request, topic=topics.requests, schema_text=evolved, priority=7)
    publish(kafka_bootstrap, topics.requests, value, key=request.correlation_id.encode())

    reply = read_reply(
        final_reply(kafka_bootstrap, topics.replies, request.correlation_id, publisher), publisher
    )
    expected = reference_captioner(tiny_model_dir).caption(image)
    assert (reply.status, reply.title) == (ReplyStatus.SUCCEEDED, expected)

    # The test registry's global rule is Apicurio's NONE: the refusals are the services' subject rules.
    incompatible = request_schema_text(**REQUIRED_FIELD)
    with pytest.raises(SchemaRegistryError) as refused:
        publisher.register(topics.requests, incompatible)
    assert refused.value.http_status_code == 409
    reply_schema = json.loads(
        publisher.client.get_latest_version(f"{topics.replies}-value").schema.schema_str or "{}"
    )
    reply_schema["fields"].append(REQUIRED_FIELD)
    with pytest.raises(SchemaRegistryError):
        publisher.client.register_schema(f"{topics.replies}-value", Schema(json.dumps(reply_schema), "AVRO"))


def test_unknown_foreign_and_recursive_schema_ids_are_dead_lettered_and_the_next_record_is_answered(
    start_worker: StartWorker,
    topics: TopicSettings,
    kafka_bootstrap: str,
    schema_registry: LocalRegistry,
) -> None:
    start_worker(**with_registry(schema_registry))
    publisher = Publisher(schema_registry.url)
    # A schema the registry knows that is not a request: our reply schema, under a topic of its own.
    foreign_id = publisher.register(f"elsewhere-{uuid.uuid4().hex[:6]}", REPLY_CODEC.writer.json_text())
    # A compatible change under the request subject, recursive: read naively, 200 KB of nesting would
    # overflow the C stack and kill the worker, again on every restart.
    node = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}
    recursive_id = publisher.register(
        topics.requests, request_schema_text(name="chain", type=["null", node], default=None)
    )
    deep = caption_request(b"x", reply_topic=topics.replies)
    deep_body = REQUEST_CODEC.encode(deep)[10:] + b"\x02" * 200_000 + b"\x00"
    hostile = {
        b"unknown-id": b"\x00" + (2**31 - 11).to_bytes(4, "big") + b"\x02ab",
        b"foreign-id": b"\x00" + foreign_id.to_bytes(4, "big") + b"\x02ab\x02cd",
        b"recursive": b"\x00" + recursive_id.to_bytes(4, "big") + deep_body,
    }
    for key, value in hostile.items():
        publish(kafka_bootstrap, topics.requests, value, key=key, partition=0)
    request = caption_request(make_image_bytes("PNG", seed=33), reply_topic=topics.replies, reply_partition=0)
    publish(
        kafka_bootstrap,
        topics.requests,
        publisher.request_value(request, topic=topics.requests),
        key=request.correlation_id.encode(),
        partition=0,
    )

    dead = read_until(kafka_bootstrap, topics.dead_letter, lambda seen: len(seen) >= 3)
    codes = {record.key: record.headers[names.DLQ_ERROR_CODE] for record in dead}
    assert codes == {
        b"unknown-id": b"unknown_schema_id",
        b"foreign-id": b"schema_mismatch",
        b"recursive": b"schema_mismatch",
    }
    assert {record.key: record.value for record in dead} == hostile  # the record's own bytes, kept
    reply = read_reply(
        final_reply(kafka_bootstrap, topics.replies, request.correlation_id, publisher), publisher
    )
    assert reply.status is ReplyStatus.SUCCEEDED


def test_a_hung_registry_costs_a_retry_not_the_partition(
    start_worker: StartWorker,
    topics: TopicSettings,
    kafka_bootstrap: str,
    schema_registry: LocalRegistry,
) -> None:
    start_worker(**with_registry(schema_registry, CAPTIONER_SCHEMA_REGISTRY_TIMEOUT_S="1"))
    publisher = Publisher(schema_registry.url)
    image = make_image_bytes("PNG", seed=34)
    framed = caption_request(image, reply_topic=topics.replies, reply_partition=0)
    plain = caption_request(image, reply_topic=topics.replies, reply_partition=0)
    # Registered now, so the worker has never looked its id up: reading it needs the registry.
    value = publisher.request_value(
        framed, topic=topics.requests, schema_text=request_schema_text(**OPTIONAL_FIELD), priority=1
    )
    with schema_registry.paused():
        publish(kafka_bootstrap, topics.requests, value, key=framed.correlation_id.encode(), partition=0)
        publish_request(kafka_bootstrap, topics.requests, plain, partition=0)
        final_reply(
            kafka_bootstrap, topics.replies, plain.correlation_id, publisher
        )  # the partition moves on
        [retried] = read_until(kafka_bootstrap, topics.retry_topic(1), lambda seen: len(seen) >= 1)
        assert retried.headers[names.RETRY_ERROR_CLASS] == b"SchemaRegistryUnavailableError"
    reply = read_reply(
        final_reply(kafka_bootstrap, topics.replies, framed.correlation_id, publisher), publisher
    )
    assert reply.status is ReplyStatus.SUCCEEDED and reply.attempt >= 2


def test_the_api_and_the_caption_cache_write_the_registry_framing_and_read_it(
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    kafka_bootstrap: str,
    schema_registry: LocalRegistry,
    tiny_model_dir: Path,
    cache_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    workers_cache, apis_cache = cache_env
    start_worker(**with_registry(schema_registry, **workers_cache))
    api = start_api(**with_registry(schema_registry, **apis_cache))
    image = make_image_bytes("PNG", seed=35)

    fresh = caption(api.url, image)
    assert fresh["cached"] is False and fresh["title"] == reference_captioner(tiny_model_dir).caption(image)
    [request_record] = read_until(kafka_bootstrap, topics.requests, lambda seen: len(seen) >= 1)
    [reply_record] = read_until(kafka_bootstrap, topics.replies, lambda seen: len(seen) >= 1)
    [entry_record] = read_until(kafka_bootstrap, topics.captions, lambda seen: len(seen) >= 1)
    for record in (request_record, reply_record, entry_record):
        assert record.value[:1] == CONFLUENT_MARKER, record.topic

    cached = wait_for_cached(api.url, image)
    assert cached["title"] == fresh["title"]


def test_the_dlq_tool_reads_a_registry_framed_dead_letter(
    start_worker: StartWorker,
    topics: TopicSettings,
    kafka_bootstrap: str,
    schema_registry: LocalRegistry,
    env: dict[str, str],
) -> None:
    registry_env = with_registry(schema_registry)
    start_worker(**registry_env)
    request = caption_request(b"not an image", reply_topic=topics.replies, reply_partition=0)
    value = Publisher(schema_registry.url).request_value(request, topic=topics.requests)
    publish(kafka_bootstrap, topics.requests, value, key=request.correlation_id.encode())
    [dead] = read_until(kafka_bootstrap, topics.dead_letter, lambda seen: len(seen) >= 1)
    assert dead.value == value and dead.headers[names.DLQ_ERROR_CODE] == b"invalid_image"

    shown = subprocess.run(
        [CAPTIONER, "dlq", "show", "--id", request.correlation_id, "--json"],
        env=service_env(env, **registry_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    [record] = json.loads(shown.stdout)["records"]
    assert record["request"]["correlation_id"] == request.correlation_id
    assert record["decode_error"] is None


def caption(url: str, image: bytes) -> dict[str, Any]:
    response = requests.post(
        url + "/api/v1/predictions", data=image, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_cached(url: str, image: bytes) -> dict[str, Any]:
    """The API's reader has no event a test can wait on: ask until an answer comes from the cache."""
    answers: list[dict[str, Any]] = []

    def cached() -> dict[str, Any] | None:
        answers.append(caption(url, image))
        return answers[-1] if answers[-1]["cached"] else None

    return wait_until(cached, timeout_s=60, interval_s=0.5, message=lambda: f"not cached: {answers[-1:]}")
