"""Spring Kafka's request-reply headers on records published with confluent-kafka to a real broker and read by
a real worker process: a reply goes where kafka_replyTopic/kafka_replyPartition say and carries
kafka_correlationId back; an undecodable record whose headers give a valid address is answered FAILED at
once; hostile headers end as dead letters only. (examples/spring runs the real ReplyingKafkaTemplate.)"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import replace

import pytest

from core.settings import TopicSettings
from schemas import REPLY_CODEC, REQUEST_CODEC, ReplyStatus
from schemas import headers as record_headers
from schemas.codec import HEADER_SIZE, MAGIC
from tests.conftest import StartWorker
from tests.support.images import make_image_bytes
from tests.support.kafka import Record, caption_request, end_offsets, publish, read_all, read_until
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What hamba/avro v2.31.0 computes for v1/caption_request.avsc (schemas/README.md warns about it).
HAMBA_FINGERPRINT = bytes.fromhex("491dd5ad5375b12e")
HUGE = 100_000


def spring_id() -> bytes:
    return uuid.uuid4().bytes  # what Spring's template sends by default: a UUID's 16 bytes


def wrong_fingerprint_request(reply_topic: str) -> bytes:
    """A well-formed request framed with a library's wrong fingerprint: the body is fine, the frame is not."""
    request = caption_request(make_image_bytes("PNG", seed=5), reply_topic=reply_topic)
    return MAGIC + HAMBA_FINGERPRINT + REQUEST_CODEC.encode(request)[HEADER_SIZE:]


def partition_header(partition: int, *, size: int = 4) -> bytes:
    return partition.to_bytes(size, "big", signed=True)


def final_replies(bootstrap: str, topic: str, count: int) -> list[Record]:
    return read_until(bootstrap, topic, lambda records: len(records) >= count, timeout_s=120)


def test_an_undecodable_record_with_spring_headers_gets_a_failed_reply_at_once(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str
) -> None:
    start_worker()
    correlation = spring_id()
    headers = [
        ("kafka_replyTopic", topics.replies.encode()),
        ("kafka_replyPartition", partition_header(2)),
        ("kafka_correlationId", correlation),
    ]

    publish(
        kafka_bootstrap,
        topics.requests,
        wrong_fingerprint_request("wherever"),
        key=b"job-spring-1",
        headers=headers,
    )

    [reply] = final_replies(kafka_bootstrap, topics.replies, 1)
    decoded = REPLY_CODEC.decode(reply.value)
    assert decoded.status is ReplyStatus.FAILED and decoded.error is not None
    assert (decoded.correlation_id, decoded.error.code) == ("job-spring-1", "unknown_fingerprint")
    assert (reply.partition, reply.key) == (2, b"job-spring-1")
    assert reply.headers["kafka_correlationId"] == correlation
    [dead] = read_until(kafka_bootstrap, topics.dead_letter, lambda records: len(records) >= 1)
    assert dead.key == b"job-spring-1"
    assert dead.headers[record_headers.DLQ_ERROR_CODE] == b"unknown_fingerprint"
    assert dead.headers["kafka_correlationId"] == correlation  # carried, so a replay answers the same caller


def test_an_undecodable_record_is_logged_under_its_escaped_key(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str
) -> None:
    worker = start_worker()

    publish(kafka_bootstrap, topics.requests, b"not avro at all", key=b"job-7\n\x1b[31mFORGED line")

    wait_until(
        lambda: "goes to the dead-letter topic" in worker.log(),
        timeout_s=60,
        message=lambda: worker.log_tail(),
    )
    [message] = [
        json.loads(line)["message"]  # the worker logs JSON lines
        for line in worker.log().splitlines()
        if "goes to the dead-letter topic" in line
    ]
    assert message.startswith("job key 'job-7\\n\\x1b[31mFORGED line' at "), message
    assert "job None" not in worker.log()
    assert "\x1b" not in worker.log()


def hostile_header_sets(topics: TopicSettings) -> dict[str, list[tuple[str, bytes]]]:
    """Each is what a hostile or broken publisher could send; none may produce a reply anywhere."""
    replies = topics.replies.encode()
    correlation = ("kafka_correlationId", spring_id())
    return {
        "illegal-topic": [("kafka_replyTopic", b"no such/topic"), correlation],
        "own-request-topic": [("kafka_replyTopic", topics.requests.encode()), correlation],
        "own-dead-letter-topic": [("kafka_replyTopic", topics.dead_letter.encode()), correlation],
        "missing-topic": [("kafka_replyTopic", f"missing-{uuid.uuid4().hex}".encode()), correlation],
        "huge-topic": [("kafka_replyTopic", b"r" * HUGE), correlation],
        "partition-out-of-range": [
            ("kafka_replyTopic", replies),
            ("kafka_replyPartition", partition_header(topics.reply_partitions)),
            correlation,
        ],
        "negative-partition": [
            ("kafka_replyTopic", replies),
            ("kafka_replyPartition", partition_header(-1)),
            correlation,
        ],
        "3-byte-partition": [
            ("kafka_replyTopic", replies),
            ("kafka_replyPartition", partition_header(1, size=3)),
            correlation,
        ],
        "huge-partition": [("kafka_replyTopic", replies), ("kafka_replyPartition", bytes(HUGE)), correlation],
        "partition-without-topic": [("kafka_replyPartition", partition_header(1)), correlation],
        "huge-correlation-id": [("kafka_replyTopic", replies), ("kafka_correlationId", b"c" * HUGE)],
        "empty-correlation-id": [("kafka_replyTopic", replies), ("kafka_correlationId", b"")],
    }


def test_hostile_spring_headers_end_as_dead_letters_only(
    start_worker: StartWorker, topics: TopicSettings, kafka_bootstrap: str
) -> None:
    worker = start_worker()
    good = caption_request(make_image_bytes("PNG", seed=6), reply_topic=topics.replies)
    cases = hostile_header_sets(topics)
    published = 0
    for name, headers in cases.items():
        valid = replace(good, correlation_id=f"valid-{name}")
        publish(kafka_bootstrap, topics.requests, REQUEST_CODEC.encode(valid), key=b"valid", headers=headers)
        undecodable = wrong_fingerprint_request(topics.replies)
        publish(kafka_bootstrap, topics.requests, undecodable, key=f"bad-{name}".encode(), headers=headers)
        published += 2

    dead = read_until(kafka_bootstrap, topics.dead_letter, lambda records: len(records) >= published)
    # A good Spring caller is still served after all of them, on the partition its header names.
    correlation = spring_id()
    spring_headers = [
        ("kafka_replyTopic", topics.replies.encode()),
        ("kafka_replyPartition", partition_header(3)),
        ("kafka_correlationId", correlation),
    ]
    publish(
        kafka_bootstrap,
        topics.requests,
        REQUEST_CODEC.encode(replace(good, reply_topic="ignored.when.headers.say")),
        key=good.correlation_id.encode(),
        headers=spring_headers,
    )

    [reply] = final_replies(kafka_bootstrap, topics.replies, 1)
    assert REPLY_CODEC.decode(reply.value).status is ReplyStatus.SUCCEEDED, worker.log_tail()
    assert (reply.partition, reply.headers["kafka_correlationId"]) == (3, correlation)
    assert worker.alive(), worker.log_tail()
    codes = Counter(record.headers[record_headers.DLQ_ERROR_CODE] for record in dead)
    assert codes == {
        b"invalid_reply_address": len(cases) - 1,
        b"reply_undeliverable": 1,  # the missing topic
        b"unknown_fingerprint": len(cases),
    }, codes
    assert len(read_all(kafka_bootstrap, topics.replies, topics.reply_partitions)) == 1  # the good one only
    own_topics = [topics.requests, topics.dead_letter]
    written = {
        topic: sum(end_offsets(kafka_bootstrap, topic, topics.request_partitions).values())
        for topic in own_topics
    }
    assert written == {topics.requests: published + 1, topics.dead_letter: published}
