"""Retry records wait for their due time by pausing their partition; a hostile due time cannot hold one
longer than the longest retry delay."""

from __future__ import annotations

import pytest
from confluent_kafka import Message, TopicPartition

from inference_consumer.holds import RetryHolds
from inference_consumer.jobs import Job
from schemas import headers as names

RETRY_TOPIC = "captioner.requests.retry.1"
NOW_S = 1_700_000_000.0
MAX_HOLD_S = 30.0


class RecordingConsumer:
    def __init__(self) -> None:
        self.paused: list[tuple[str, int, int]] = []
        self.sought: list[tuple[str, int, int]] = []
        self.resumed: list[tuple[str, int]] = []

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused += [(p.topic, p.partition, p.offset) for p in partitions]

    def seek(self, partition: TopicPartition) -> None:
        self.sought.append((partition.topic, partition.partition, partition.offset))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed += [(p.topic, p.partition) for p in partitions]


class Clock:
    def __init__(self, start_s: float) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def consumer() -> RecordingConsumer:
    return RecordingConsumer()


@pytest.fixture
def monotonic() -> Clock:
    return Clock(100.0)


@pytest.fixture
def holds(consumer: RecordingConsumer, monotonic: Clock) -> RetryHolds:
    return RetryHolds(
        consumer,
        retry_topics={RETRY_TOPIC},
        max_hold_s=MAX_HOLD_S,
        wall_clock_s=lambda: NOW_S,
        monotonic_s=monotonic,
    )


def retry_job(due: bytes | None, *, topic: str = RETRY_TOPIC, offset: int = 7) -> Job:
    headers = [] if due is None else [(names.RETRY_DUE_MS, due)]
    return Job.from_message(
        Message(
            topic=topic, partition=2, offset=offset, key=None, value=b"", headers=headers, timestamp=(1, 0)
        )
    )


def due_in(seconds: float) -> bytes:
    return str(int((NOW_S + seconds) * 1000)).encode()


def test_a_record_not_yet_due_pauses_its_partition_at_the_record(
    holds: RetryHolds, consumer: RecordingConsumer, monotonic: Clock
) -> None:
    assert holds.hold_if_not_due(retry_job(due_in(2)))

    assert consumer.paused == consumer.sought == [(RETRY_TOPIC, 2, 7)]
    assert holds.holds(RETRY_TOPIC, 2)
    monotonic.now_s = 101.9
    holds.release_due()
    assert consumer.resumed == []
    monotonic.now_s = 102.0
    holds.release_due()
    assert consumer.resumed == [(RETRY_TOPIC, 2)]
    assert not holds.holds(RETRY_TOPIC, 2)


def test_a_hostile_due_time_far_in_the_future_holds_no_longer_than_the_longest_delay(
    holds: RetryHolds, consumer: RecordingConsumer, monotonic: Clock
) -> None:
    assert holds.hold_if_not_due(retry_job(due_in(10**9)))

    monotonic.now_s = 100.0 + MAX_HOLD_S
    holds.release_due()
    assert consumer.resumed == [(RETRY_TOPIC, 2)]


@pytest.mark.parametrize("due", [None, due_in(-5), due_in(0), b"soon", b"-1", b"9" * 40])
def test_a_due_or_unreadable_due_time_runs_at_once(
    holds: RetryHolds, consumer: RecordingConsumer, due: bytes | None
) -> None:
    assert not holds.hold_if_not_due(retry_job(due))
    assert consumer.paused == []


def test_only_retry_tiers_are_held(holds: RetryHolds, consumer: RecordingConsumer) -> None:
    assert not holds.hold_if_not_due(retry_job(due_in(2), topic="captioner.requests"))
    assert consumer.paused == []


def test_assignment_resumes_what_a_pause_kept_across_a_rebalance(
    holds: RetryHolds, consumer: RecordingConsumer
) -> None:
    holds.assigned([TopicPartition(RETRY_TOPIC, 2), TopicPartition("captioner.requests", 0)])

    assert consumer.resumed == [(RETRY_TOPIC, 2), ("captioner.requests", 0)]


def test_a_revoked_partitions_hold_ends_with_it(
    holds: RetryHolds, consumer: RecordingConsumer, monotonic: Clock
) -> None:
    holds.hold_if_not_due(retry_job(due_in(2)))

    holds.forget([(RETRY_TOPIC, 2)])

    assert not holds.holds(RETRY_TOPIC, 2)
    monotonic.now_s = 200.0
    holds.release_due()
    assert consumer.resumed == []


def test_a_record_whose_hold_ended_is_not_held_again_when_fetched_again(
    holds: RetryHolds, consumer: RecordingConsumer, monotonic: Clock
) -> None:
    hostile = retry_job(due_in(10**9))
    assert holds.hold_if_not_due(hostile)
    monotonic.now_s = 100.0 + MAX_HOLD_S
    holds.release_due()

    assert not holds.hold_if_not_due(retry_job(due_in(10**9)))

    assert consumer.paused == [(RETRY_TOPIC, 2, 7)]
    assert not holds.holds(RETRY_TOPIC, 2)


def test_the_next_record_of_a_partition_is_held_after_the_one_before_ran(
    holds: RetryHolds, consumer: RecordingConsumer, monotonic: Clock
) -> None:
    assert holds.hold_if_not_due(retry_job(due_in(2), offset=7))
    monotonic.now_s = 102.0
    holds.release_due()

    assert holds.hold_if_not_due(retry_job(due_in(5), offset=8))

    assert consumer.paused == [(RETRY_TOPIC, 2, 7), (RETRY_TOPIC, 2, 8)]
