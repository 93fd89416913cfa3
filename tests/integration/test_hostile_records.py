"""Hostile records on every request partition and retry tier, against a real broker and worker
process: the worker lives, every record is accounted for, and a normal request is still served."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from hypothesis import HealthCheck, Phase, given, settings

from core.settings import TopicSettings, WorkerSettings
from schemas import REPLY_CODEC, REQUEST_CODEC, ReplyStatus, SchemaContractError
from schemas import headers as record_headers
from tests.conftest import StartWorker
from tests.support.hostile import HostileRecord, bad_images, hostile_records
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import (
    caption_request,
    committed_offsets,
    end_offsets,
    publish,
    publish_request,
    read_all,
    read_until,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GENERATED = 500


@dataclass(frozen=True)
class Published:
    record: HostileRecord
    topic: str
    partition: int
    offset: int


def generate(reply_topics: list[str]) -> list[HostileRecord]:
    drawn: list[HostileRecord] = []

    @settings(
        max_examples=GENERATED,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(record=hostile_records(reply_topics=reply_topics))
    def draw(record: HostileRecord) -> None:
        drawn.append(record)

    draw()
    return drawn


def refused_cases(topics: TopicSettings) -> list[HostileRecord]:
    """Valid records with a field the worker must refuse: each ends in the dead-letter topic."""
    good = caption_request(make_image_bytes("PNG", seed=4), reply_topic=topics.replies, reply_partition=1)
    values = [
        replace(good, correlation_id=uuid.uuid4().hex, reply_partition=999),
        replace(good, correlation_id=uuid.uuid4().hex, reply_partition=-5),
        replace(good, correlation_id=uuid.uuid4().hex, reply_topic=f"missing-{uuid.uuid4().hex}"),
        replace(good, correlation_id=uuid.uuid4().hex, reply_topic=f"missing-{uuid.uuid4().hex}"),
        replace(good, correlation_id=uuid.uuid4().hex, max_new_tokens=-1),
    ]
    return [HostileRecord(REQUEST_CODEC.encode(value), []) for value in values]


def served_cases(topics: TopicSettings) -> list[HostileRecord]:
    """Cases that once stopped or exhausted a worker and must now be captioned."""
    good = caption_request(make_image_bytes("PNG", seed=4), reply_topic=topics.replies, reply_partition=1)
    strip = replace(good, correlation_id=uuid.uuid4().hex, image=bad_images()[18])  # 40000x2 PNG
    bad_attempt = replace(good, correlation_id=uuid.uuid4().hex)
    return [
        HostileRecord(REQUEST_CODEC.encode(strip), []),
        HostileRecord(REQUEST_CODEC.encode(bad_attempt), [(record_headers.ATTEMPT, b"x")]),
    ]


def bad_image_cases(topics: TopicSettings) -> list[HostileRecord]:
    good = caption_request(make_image_bytes("PNG", seed=4), reply_topic=topics.replies, reply_partition=1)
    values = [replace(good, correlation_id=uuid.uuid4().hex, image=image) for image in bad_images()]
    return [HostileRecord(REQUEST_CODEC.encode(value), []) for value in values]


def correlation_ids(records: list[HostileRecord]) -> set[str]:
    return {REQUEST_CODEC.decode(record.value or b"").correlation_id for record in records}


def publish_all(
    bootstrap: str, targets: list[str], partitions: int, records: list[HostileRecord]
) -> list[Published]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    published: list[Published] = []

    def delivered(record: HostileRecord) -> object:
        def on_delivery(error: KafkaError | None, message: Message) -> None:
            assert error is None, error
            published.append(Published(record, message.topic(), message.partition(), message.offset()))

        return on_delivery

    for index, record in enumerate(records):
        producer.produce(
            targets[index % len(targets)],
            value=record.value,
            key=record.key,
            headers=record.headers,
            partition=(index // len(targets)) % partitions,
            on_delivery=delivered(record),
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    return published


def wait_until_committed(
    bootstrap: str, groups: dict[str, str], partitions: int, *, timeout_s: float
) -> None:
    """Until each topic's committed offset in its group is its end offset, on every partition."""
    ends = {topic: end_offsets(bootstrap, topic, partitions) for topic in groups}
    for topic, topic_ends in ends.items():
        assert all(topic_ends.values()), f"{topic}: a partition got no record: {topic_ends}"

    def behind() -> dict[str, dict[int, int]]:
        committed = {
            topic: committed_offsets(bootstrap, group, topic, partitions) for topic, group in groups.items()
        }
        return {topic: offsets for topic, offsets in committed.items() if offsets != ends[topic]}

    wait_until(
        lambda: not behind(),
        timeout_s=timeout_s,
        interval_s=0.5,
        message=lambda: f"committed {behind()}, end {ends}",
    )


def accounted(item: Published, dead_values: Counter[bytes], succeeded: set[str]) -> bool:
    value = item.record.value or b""
    if dead_values[value] > 0:
        dead_values[value] -= 1
        return True
    try:
        request = REQUEST_CODEC.decode(value)
    except SchemaContractError:
        return False
    return request.correlation_id in succeeded or request.deadline <= datetime.now(UTC)


def test_hostile_records_never_stop_the_worker_and_each_is_accounted_for(
    start_worker: StartWorker,
    topics: TopicSettings,
    kafka_bootstrap: str,
    env: dict[str, str],
    tiny_model_dir: Path,
) -> None:
    worker = start_worker()
    reply_topics = [topics.replies, f"missing-{uuid.uuid4().hex}", topics.requests, topics.dead_letter]
    refused, served = refused_cases(topics), served_cases(topics)
    records = refused + served + bad_image_cases(topics) + generate(reply_topics)
    targets = [topics.requests, *topics.retry_topics]
    partitions = topics.request_partitions

    published = publish_all(kafka_bootstrap, targets, partitions, records)
    group = env["CAPTIONER_WORKER_GROUP_ID"]
    retry_group = WorkerSettings(worker_group_id=group).retry_group_id
    groups = {topics.requests: group} | dict.fromkeys(topics.retry_topics, retry_group)
    wait_until_committed(kafka_bootstrap, groups, partitions, timeout_s=150)

    assert worker.alive(), worker.log()[-3000:]
    dead = read_all(kafka_bootstrap, topics.dead_letter, partitions)
    replies = [REPLY_CODEC.decode(r.value) for r in read_all(kafka_bootstrap, topics.replies, 4)]
    succeeded = {reply.correlation_id for reply in replies if reply.status is ReplyStatus.SUCCEEDED}
    dead_values = Counter(record.value for record in dead)
    missing = [item for item in published if not accounted(item, dead_values, succeeded)]
    assert len(published) >= GENERATED and not missing, missing[:5]
    assert not correlation_ids(refused) & succeeded
    assert correlation_ids(served) <= succeeded
    assert {record.value for record in refused} <= set(dead_values)
    codes = Counter(r.headers.get(record_headers.DLQ_ERROR_CODE, b"?").decode() for r in dead)
    print(f"{len(published)} hostile records: {len(succeeded)} captioned, dead letters by code: {codes}")

    image = make_image_bytes("JPEG", seed=11)
    request = caption_request(image, reply_topic=topics.replies, reply_partition=2)
    publish_request(kafka_bootstrap, topics.requests, request)
    [answer] = [
        REPLY_CODEC.decode(r.value)
        for r in read_until(
            kafka_bootstrap,
            topics.replies,
            lambda seen: any(r.key == request.correlation_id.encode() for r in seen),
            timeout_s=60,
        )
        if r.key == request.correlation_id.encode()
    ]
    assert answer.status is ReplyStatus.SUCCEEDED
    assert answer.title == reference_captioner(tiny_model_dir).caption(image)


def test_a_dead_letter_topic_that_refuses_records_stops_the_worker_non_zero(
    start_worker: StartWorker, env: dict[str, str], kafka_bootstrap: str
) -> None:
    """A worker that can keep a failed job nowhere must not go on: it exits non-zero, uncommitted, and
    without waiting at its partitions' revocation for the job that can never finish."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    dead_letter, requests_topic = env["CAPTIONER_TOPIC_DEAD_LETTER"], env["CAPTIONER_TOPIC_REQUESTS"]
    small = NewTopic(
        dead_letter, num_partitions=6, replication_factor=1, config={"max.message.bytes": "2048"}
    )
    admin.create_topics([small])[dead_letter].result(timeout=30)
    worker = start_worker()

    publish(kafka_bootstrap, requests_topic, b"garbage" * 1000, partition=0)

    assert worker.wait_exit(timeout_s=60) == 3, worker.log()[-3000:]
    assert "refused" in worker.log()
    assert "jobs still running" not in worker.log()
    assert committed_offsets(kafka_bootstrap, env["CAPTIONER_WORKER_GROUP_ID"], requests_topic, 6)[0] <= 0


def test_a_reply_the_broker_refuses_sends_the_job_to_the_dlq_and_the_partition_goes_on(
    start_worker: StartWorker,
    topics: TopicSettings,
    env: dict[str, str],
    kafka_bootstrap: str,
    tiny_model_dir: Path,
) -> None:
    """The reply topic exists, so the request passes the worker's address check; the broker refuses
    the reply itself (larger than the topic takes): a refusal that comes with the delivery report."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    narrow = f"{env['CAPTIONER_TOPIC_REPLIES']}.narrow"
    topic = NewTopic(narrow, num_partitions=1, replication_factor=1, config={"max.message.bytes": "64"})
    admin.create_topics([topic])[narrow].result(timeout=30)
    start_worker()
    refused = caption_request(make_image_bytes("PNG", seed=8), reply_topic=narrow)
    refused_bytes = REQUEST_CODEC.encode(refused)
    image = make_image_bytes("PNG", seed=9)
    served = caption_request(image, reply_topic=topics.replies)
    publish(kafka_bootstrap, topics.requests, refused_bytes, key=refused.correlation_id.encode(), partition=2)
    publish_request(kafka_bootstrap, topics.requests, served, partition=2)

    [dead] = read_until(kafka_bootstrap, topics.dead_letter, lambda records: len(records) >= 1)
    replies = read_until(
        kafka_bootstrap,
        topics.replies,
        lambda seen: any(r.key == served.correlation_id.encode() for r in seen),
    )

    assert dead.headers[record_headers.DLQ_ERROR_CODE] == b"reply_undeliverable"
    assert b"refused the reply" in dead.headers[record_headers.DLQ_ERROR_MESSAGE]  # not the address check
    assert dead.value == refused_bytes  # the original record, byte for byte
    assert dead.key == refused.correlation_id.encode()
    assert dead.headers[record_headers.ORIGINAL_PARTITION] == b"2"
    assert dead.headers[record_headers.ORIGINAL_OFFSET] == b"0"
    [answer] = [REPLY_CODEC.decode(r.value) for r in replies if r.key == served.correlation_id.encode()]
    assert answer.status is ReplyStatus.SUCCEEDED
    assert answer.title == reference_captioner(tiny_model_dir).caption(image)
    assert end_offsets(kafka_bootstrap, narrow, 1) == {0: 0}
    group = env["CAPTIONER_WORKER_GROUP_ID"]
    wait_until(
        lambda: committed_offsets(kafka_bootstrap, group, topics.requests, topics.request_partitions)[2] == 2,
        timeout_s=30,
        interval_s=0.5,
        message="the refused job's offset was not committed with the next one's",
    )
