"""The feeder decodes ahead only as far as the batching policy's backlog allows."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
import torch
from confluent_kafka import Message, TopicPartition
from hypothesis import given, settings

from core.offsets import OffsetTracker
from inference_consumer.delivery import AutoCommits
from inference_consumer.feeder import JobFeeder
from inference_consumer.jobs import Job
from inference_consumer.kafka_waits import KafkaWaits
from inference_consumer.validation import RequestRules
from schemas import REQUEST_CODEC, CaptionerError
from tests.support.hostile import HostileRecord, hostile_records
from tests.support.kafka import caption_request


class IdleProducer:
    def __init__(self) -> None:
        self.polls = 0

    def poll(self, _timeout: float = 0) -> int:
        self.polls += 1
        return 0

    def __len__(self) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


class IdleOutcomes:
    """Outcomes for paths that produce none: serve() is what the feeder calls while it waits."""

    def __init__(self) -> None:
        self.serves = 0

    def serve(self) -> None:
        self.serves += 1


class Backlog:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self) -> int:
        return self.size


def request_message(offset: int) -> Message:
    request = caption_request(b"img", reply_topic="results", correlation_id=f"c-{offset}")
    return Message(
        topic="captioner.requests",
        partition=0,
        offset=offset,
        key=request.correlation_id.encode(),
        value=REQUEST_CODEC.encode(request),
        headers=[],
        timestamp=(1, 0),
    )


@pytest.fixture
def backlog() -> Backlog:
    return Backlog(2)


@pytest.fixture
def ready() -> queue.Queue[Job]:
    return queue.Queue()


@pytest.fixture
def fatal_reasons() -> list[str]:
    return []


def build_feeder(
    *,
    backlog: Backlog,
    ready: queue.Queue[Job],
    pool: ThreadPoolExecutor,
    on_fatal: Any,
    outcomes: Any = None,
    consumer: Any = None,  # most paths under test touch no consumer
    retry_topics: frozenset[str] = frozenset(),
) -> JobFeeder:
    tracker, waits = OffsetTracker(), KafkaWaits(timeout_s=1.0, reachable=lambda: True)
    return JobFeeder(
        consumer=consumer,
        commits=AutoCommits(tracker=tracker, producer=IdleProducer(), waits=waits),  # type: ignore[arg-type]
        topics=["captioner.requests"],
        retry_topics=set(retry_topics),
        tracker=tracker,
        outcomes=outcomes or IdleOutcomes(),
        ready=ready,
        backlog=backlog,
        decode_pool=pool,
        preprocess=lambda _data: torch.zeros(3, 2, 2),
        fetch_size=8,
        waits=waits,
        rules=RequestRules(own_topics=frozenset(["captioner.requests"])),
        reply_partitions=lambda _topic: 4,
        max_hold_s=1.0,
        on_fatal=on_fatal,
    )


@pytest.fixture
def feeder(backlog: Backlog, ready: queue.Queue[Job], fatal_reasons: list[str]) -> Iterator[JobFeeder]:
    with ThreadPoolExecutor(1) as pool:
        feeder = build_feeder(backlog=backlog, ready=ready, pool=pool, on_fatal=fatal_reasons.append)
        yield feeder
        feeder.stopping.set()


def take_in_background(feeder: JobFeeder, offset: int) -> threading.Thread:
    taking = threading.Thread(target=feeder._take, args=(request_message(offset),), daemon=True)
    taking.start()
    return taking


def test_jobs_wait_while_the_backlog_is_full(feeder: JobFeeder, ready: queue.Queue[Job]) -> None:
    feeder._take(request_message(0))
    feeder._take(request_message(1))

    third = take_in_background(feeder, 2)
    third.join(0.2)
    assert third.is_alive() and ready.qsize() == 2

    assert ready.get_nowait().offset == 0  # the inference loop takes a job
    third.join(2.0)
    assert not third.is_alive()
    assert [ready.get_nowait().offset for _ in range(2)] == [1, 2]


def test_a_larger_backlog_lets_waiting_jobs_in(
    feeder: JobFeeder, ready: queue.Queue[Job], backlog: Backlog
) -> None:
    feeder._take(request_message(0))
    feeder._take(request_message(1))
    third = take_in_background(feeder, 2)
    third.join(0.2)
    assert third.is_alive()

    backlog.size = 4  # the policy saw a faster batch
    third.join(2.0)

    assert not third.is_alive() and ready.qsize() == 3


def test_stopping_leaves_a_waiting_job_out(feeder: JobFeeder, ready: queue.Queue[Job]) -> None:
    feeder._take(request_message(0))
    feeder._take(request_message(1))
    third = take_in_background(feeder, 2)
    third.join(0.2)

    feeder.stopping.set()
    third.join(2.0)

    assert not third.is_alive() and ready.qsize() == 2


class RecordingOutcomes:
    def __init__(self) -> None:
        self.failures: list[tuple[Job, BaseException]] = []
        self.expired: list[Job] = []

    def failed(self, job: Job, error: BaseException) -> None:
        self.failures.append((job, error))

    def skipped_expired(self, job: Job) -> None:
        self.expired.append(job)

    def serve(self) -> None:
        pass


class PausingConsumer:
    def __init__(self) -> None:
        self.paused: list[Any] = []

    def pause(self, partitions: list[Any]) -> None:
        self.paused += partitions

    def seek(self, _partition: Any) -> None:
        pass


def raw_message(
    value: bytes | None, *, headers: list[tuple[str, bytes]] | None = None, topic: str = "captioner.requests"
) -> Message:
    return Message(
        topic=topic, partition=0, offset=5, key=None, value=value, headers=headers or [], timestamp=(1, 0)
    )


def hostile_request(**fields: Any) -> bytes:
    return REQUEST_CODEC.encode(replace(caption_request(b"img", reply_topic="results"), **fields))


@pytest.mark.parametrize(
    ("value", "code", "answerable"),
    [
        (None, "truncated_record", False),
        (b"\xc3\x01" + b"\x00" * 8, "unknown_fingerprint", False),
        (b"random bytes", "not_single_object", False),
        (hostile_request(reply_partition=999), "invalid_reply_address", False),
        (hostile_request(reply_partition=-5), "invalid_reply_address", False),
        (hostile_request(reply_topic="captioner.requests"), "invalid_reply_address", False),
        (hostile_request(max_new_tokens=0), "invalid_request", True),
        (hostile_request(content_type="application/postscript"), "invalid_request", True),
    ],
    # The same ids in every pytest-xdist worker (a request carries a fresh correlation id and time)
    ids=[
        "null",
        "unknown-fingerprint",
        "not-single-object",
        "reply-partition-999",
        "reply-partition-negative",
        "reply-topic-is-the-request-topic",
        "max-new-tokens-0",
        "postscript",
    ],
)
def test_each_hostile_record_ends_in_its_own_outcome(
    feeder: JobFeeder, ready: queue.Queue[Job], value: bytes | None, code: str, answerable: bool
) -> None:
    outcomes = RecordingOutcomes()
    feeder._outcomes = outcomes  # type: ignore[assignment]

    feeder._take(raw_message(value, headers=[("captioner.attempt", b"x")]))

    [(job, error)] = outcomes.failures
    assert getattr(error, "code", None) == code
    assert (job.reply_to is not None) is answerable
    assert ready.empty()


def test_an_unexpected_error_is_contained_in_the_records_outcome(feeder: JobFeeder) -> None:
    outcomes = RecordingOutcomes()
    feeder._outcomes = outcomes  # type: ignore[assignment]

    def broken_lookup(_topic: str) -> int:
        raise KeyError("a bug")

    feeder._reply_partitions = broken_lookup
    feeder._take(raw_message(hostile_request()))

    [(_job, error)] = outcomes.failures
    assert isinstance(error, KeyError)


def test_a_retry_record_not_yet_due_holds_its_partition(ready: queue.Queue[Job]) -> None:
    consumer, outcomes = PausingConsumer(), RecordingOutcomes()
    due_later = str(int((time.time() + 10**9) * 1000)).encode()
    with ThreadPoolExecutor(1) as pool:
        feeder = build_feeder(
            backlog=Backlog(8),
            ready=ready,
            pool=pool,
            on_fatal=list[str]().append,
            outcomes=outcomes,
            consumer=consumer,
            retry_topics=frozenset(["captioner.requests.retry.1"]),
        )

        feeder._take(
            raw_message(
                hostile_request(),
                headers=[("captioner.retry.due-ms", due_later)],
                topic="captioner.requests.retry.1",
            )
        )

    assert len(consumer.paused) == 1
    assert ready.empty() and outcomes.failures == []


class RebalancedConsumer:
    """Its poll returns records fetched before a rebalance callback that the same poll serves, then the
    rest after it, as librdkafka's one queue of records and callbacks, served in order, can."""

    def __init__(self, records: list[Message]) -> None:
        self.records = records
        self.callback: Any = None  # the feeder's _on_lost or _on_revoke
        self.stored: list[TopicPartition] = []

    def poll(self, _timeout: float) -> Message:
        return self.records[0]

    def consume(self, *, num_messages: int, timeout: float) -> list[Message]:
        self.callback(self, [TopicPartition("captioner.requests", 0)])
        return self.records[1:]

    def store_offsets(self, *, offsets: list[TopicPartition]) -> None:
        self.stored += offsets

    def commit(self, *, asynchronous: bool) -> None:
        pass


@pytest.mark.parametrize("rebalance", ["lost", "revoked"])
def test_records_fetched_before_their_partition_went_in_the_same_poll_are_left_to_its_next_owner(
    ready: queue.Queue[Job], rebalance: str
) -> None:
    consumer = RebalancedConsumer([request_message(offset) for offset in range(3)])
    with ThreadPoolExecutor(1) as pool:
        feeder = build_feeder(
            backlog=Backlog(8), ready=ready, pool=pool, on_fatal=list[str]().append, consumer=consumer
        )
        consumer.callback = feeder._on_lost if rebalance == "lost" else feeder._on_revoke

        feeder._poll_once()

    assert ready.empty()
    assert feeder._tracker.outstanding() == 0 and feeder._tracker.positions() == {}
    assert consumer.stored == []


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(record=hostile_records(reply_topics=["results", "captioner.requests"]))
def test_no_record_raises_out_of_the_feeder_and_each_ends_once(record: HostileRecord) -> None:
    outcomes, ready, fatal = RecordingOutcomes(), queue.Queue[Job](), list[str]()
    with ThreadPoolExecutor(1) as pool:
        feeder = build_feeder(
            backlog=Backlog(8), ready=ready, pool=pool, on_fatal=fatal.append, outcomes=outcomes
        )
        message = Message(
            topic="captioner.requests",
            partition=0,
            offset=5,
            key=record.key,
            value=record.value,
            headers=record.headers,
            timestamp=(1, 0),
        )

        feeder._take(message)

    assert len(outcomes.failures) + len(outcomes.expired) + ready.qsize() == 1
    assert fatal == []
    for _job, error in outcomes.failures:
        assert isinstance(error, CaptionerError), repr(error)
