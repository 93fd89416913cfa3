"""`captioner dlq` as a script runs it, against a real broker and real workers: a poison image lands in
the dead-letter topic, is inspected, and replayed exactly once after the fix."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from core.settings import TopicSettings
from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionReply, CaptionRequest, ReplyStatus
from schemas import headers as names
from tests.conftest import StartWorker
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.services import CAPTIONER, service_env
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def captioner_dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAPTIONER, "dlq", *args], env=service_env(env), capture_output=True, text=True, timeout=60
    )


def dlq_json(env: dict[str, str], *args: str) -> Any:
    result = captioner_dlq(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_dead_letters(env: dict[str, str], count: int, *, timeout_s: float = 60) -> Any:
    seen: list[Any] = []

    def listed() -> Any:
        seen.append(overview := dlq_json(env, "list"))
        return overview if overview["total"] >= count else None

    return wait_until(
        listed,
        timeout_s=timeout_s,
        interval_s=0.5,
        message=lambda: f"{seen[-1]['total']} dead letters, expected {count}",
    )


def reply_consumer(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"caller-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    return consumer


def await_reply(
    consumer: Consumer, correlation_id: str, status: ReplyStatus, *, timeout_s: float = 60
) -> CaptionReply:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        message = consumer.poll(0.2)
        if message is None or message.error():
            continue
        reply = REPLY_CODEC.decode(message.value() or b"")
        if reply.correlation_id == correlation_id and reply.status is status:
            return reply
    raise AssertionError(f"no {status} reply for {correlation_id}")


def topic_end(bootstrap: str, topic: str, partitions: int, *, timeout_s: float = 30) -> int:
    """The sum of the partitions' high watermarks; a topic created a moment ago may have no leader yet."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    ends: list[int] = []
    failures: list[KafkaException] = []

    def answered() -> bool:
        try:
            ends.append(
                sum(
                    consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in range(partitions)
                )
            )
            return True
        except KafkaException as exc:
            failures.append(exc)
            return False

    try:
        wait_until(answered, timeout_s=timeout_s, message=lambda: failures[-1])
        return ends[-1]
    finally:
        consumer.close()


def request_topic_end(bootstrap: str, topics: TopicSettings) -> int:
    return topic_end(bootstrap, topics.requests, topics.request_partitions)


def test_a_poison_image_is_inspected_and_replayed_once_after_the_fix(
    start_worker: StartWorker,
    topics: TopicSettings,
    env: dict[str, str],
    kafka_bootstrap: str,
    tiny_model_dir: Path,
) -> None:
    poisoned = start_worker(CAPTIONER_MAX_IMAGE_PIXELS="100")  # every image is "too large": permanent
    image = make_image_bytes("PNG", seed=21)
    correlation_id = f"poison-{uuid.uuid4()}"
    now = datetime.now(UTC)
    deadline = now + timedelta(seconds=5)
    request = CaptionRequest(
        correlation_id=correlation_id,
        image=image,
        content_type="image/png",
        reply_topic=topics.replies,
        deadline=deadline,
        created_at=now,
    )
    replies = reply_consumer(kafka_bootstrap, topics.replies)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.requests, key=correlation_id.encode(), value=REQUEST_CODEC.encode(request))
    producer.produce(topics.requests, key=b"garbage-key", value=os.urandom(64))
    assert producer.flush(10) == 0

    try:
        # list: both records, counted by class
        overview = wait_for_dead_letters(env, 2)
        assert {e["error_class"]: e["count"] for e in overview["by_error"]} == {
            "ImageTooLargeError": 1,
            "NotSingleObjectError": 1,
        }
        listed = captioner_dlq(env, "list")
        assert listed.returncode == 0 and "2 dead letters" in listed.stdout
        assert "ImageTooLargeError" in listed.stdout and "NotSingleObjectError" in listed.stdout

        # show by id: the decoded request and the worker's headers, not the image
        [shown] = dlq_json(env, "show", "--id", correlation_id)["records"]
        assert shown["request"] == {
            "correlation_id": correlation_id,
            "reply_topic": topics.replies,
            "reply_partition": None,
            "content_type": "image/png",
            "image_bytes": len(image),
            "created_at": shown["request"]["created_at"],
            "deadline": shown["request"]["deadline"],
            "max_new_tokens": None,
        }
        assert datetime.fromisoformat(shown["request"]["deadline"]) == deadline.replace(
            microsecond=deadline.microsecond // 1000 * 1000
        )
        assert shown["headers"]["captioner.dlq.error.class"] == "ImageTooLargeError"
        assert shown["headers"]["captioner.original.topic"] == topics.requests
        assert shown["headers"]["captioner.attempt"] == "1"
        text = captioner_dlq(
            env, "show", "--partition", str(shown["partition"]), "--offset", str(shown["offset"])
        )
        assert text.returncode == 0
        assert correlation_id in text.stdout and "image/png" in text.stdout

        # show an unreadable record by its position: the key stands in for the request
        [garbage] = dlq_json(env, "show", "--id", "garbage-key")["records"]
        shown_garbage = captioner_dlq(
            env, "show", "--partition", str(garbage["partition"]), "--offset", str(garbage["offset"])
        )
        assert shown_garbage.returncode == 0
        assert "key         garbage-key" in shown_garbage.stdout
        assert "not a readable CaptionRequest: NotSingleObjectError" in shown_garbage.stdout
        missing = captioner_dlq(env, "show", "--partition", "0", "--offset", "999")
        assert missing.returncode == 4 and "no dead letter" in missing.stderr

        await_reply(replies, correlation_id, ReplyStatus.FAILED)
        poisoned.stop()
        start_worker()  # the fix: default pixel limit

        # a filter that matches nothing replays nothing
        nothing = dlq_json(env, "replay", "--error-class", "NoSuchError")
        assert nothing["counts"]["replayed"] == 0 and nothing["counts"]["not_selected"] == 2

        # a dry run names the record and publishes nothing
        before = request_topic_end(kafka_bootstrap, topics)
        dry = dlq_json(env, "replay", "--error-class", "ImageTooLargeError", "--dry-run")
        assert dry["counts"]["would_replay"] == 1
        assert [p["correlation_id"] for p in dry["planned"]] == [correlation_id]
        assert request_topic_end(kafka_bootstrap, topics) == before

        # the replay: past its deadline, the job still runs and the caller's topic gets the title
        wait_until(
            lambda: datetime.now(UTC) > deadline, timeout_s=30, message="the request's deadline never passed"
        )
        replayed = dlq_json(env, "replay", "--error-class", "ImageTooLargeError")
        assert replayed["counts"]["replayed"] == 1 and replayed["exit_code"] == 0
        reply = await_reply(replies, correlation_id, ReplyStatus.SUCCEEDED)
        assert reply.title == reference_captioner(tiny_model_dir).caption(image)
        assert reply.attempt == 1

        # idempotent: the same filter again, and an unfiltered run, leave the replayed record alone
        again = dlq_json(env, "replay", "--error-class", "ImageTooLargeError")
        assert again["counts"]["replayed"] == 0
        everything = dlq_json(env, "replay", "--dry-run")
        assert everything["counts"]["already_replayed"] == 1
        assert [p["correlation_id"] for p in everything["planned"]] == ["garbage-key"]
        assert request_topic_end(kafka_bootstrap, topics) == before + 1
    finally:
        replies.close()


def test_a_missing_topic_exits_3(env: dict[str, str]) -> None:
    result = captioner_dlq(env, "list", "--topic", f"missing-{uuid.uuid4().hex}")
    assert result.returncode == 3
    assert "does not exist" in result.stderr


def test_a_forged_origin_is_not_replayed_until_the_operator_names_the_target(
    topics: TopicSettings, env: dict[str, str], kafka_bootstrap: str
) -> None:
    """Whoever can write to the DLQ writes its headers: one claims to come from the reply topic, where a
    replay would forge callers' replies; the others are garbage that list and show have to get through."""
    forged = [
        (names.ORIGINAL_TOPIC, topics.replies.encode()),
        (names.ORIGINAL_PARTITION, b"\xff\xfe"),
        (names.ORIGINAL_OFFSET, None),
        (names.DLQ_ERROR_CLASS, b"\x1b[2J\xff" + b"E" * 10_000),
        (names.DLQ_FAILED_AT_MS, b"99999999999999999"),
        (names.DLQ_ERROR_MESSAGE, b"m" * 200_000),
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.dead_letter, partition=0, key=b"forged", value=b"junk", headers=forged)
    producer.produce(topics.dead_letter, partition=0, key=b"no-origin", value=b"junk", headers=[])
    assert producer.flush(10) == 0
    replies = topic_end(kafka_bootstrap, topics.replies, topics.reply_partitions)
    requests = request_topic_end(kafka_bootstrap, topics)

    wait_for_dead_letters(env, 2)
    listed = captioner_dlq(env, "list")
    [shown] = dlq_json(env, "show", "--id", "forged")["records"]
    shown_text = captioner_dlq(env, "show", "--partition", "0", "--offset", str(shown["offset"]))
    assert listed.returncode == 0 and shown_text.returncode == 0, listed.stderr + shown_text.stderr
    assert "\x1b" not in listed.stdout + shown_text.stdout
    assert shown["origin"] is None and shown["failed_at"] == shown["timestamp"]  # header unusable
    assert shown["headers"][names.DLQ_ERROR_MESSAGE].endswith("(200000 bytes in all)")

    refused = captioner_dlq(env, "replay", "--json")
    summary = json.loads(refused.stdout)
    assert refused.returncode == 1
    assert (summary["counts"]["failed"], summary["counts"]["held_back"]) == (1, 1)
    assert f"names {topics.replies!r}" in summary["errors"][0]

    named = dlq_json(env, "replay", "--to", topics.requests)
    assert named["counts"]["replayed"] == 2 and named["to"] == topics.requests
    assert topic_end(kafka_bootstrap, topics.replies, topics.reply_partitions) == replies
    assert request_topic_end(kafka_bootstrap, topics) == requests + 2
