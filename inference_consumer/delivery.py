"""How a worker's outcome records reach Kafka and how its offsets are committed, in either delivery guarantee
(CAPTIONER_DELIVERY_GUARANTEE; docs/failure-handling.md, "Delivery guarantees").

The outcome publisher (outcomes.py) decides what each job's records are and what to do when one cannot be
written; a sink decides when a record counts as written:
- at least once (DirectSink, AutoCommits here): a record is produced at once and counts once the broker
  acknowledged it; feeders store the finished offsets and librdkafka's auto-commit commits them;
- exactly once (transactions.py): a record counts once it is staged in the worker's next transaction, which
  commits it together with the offsets it finishes.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from core.offsets import OffsetTracker, PartitionKey
from inference_consumer.jobs import Job
from inference_consumer.kafka_waits import KafkaWaits

log = logging.getLogger(__name__)

_QUEUE_FULL_WAIT_S = 0.05


@dataclass(eq=False)
class OutcomeRecord:
    """One record a job's outcome writes (or a caption-cache entry), and what follows from its fate."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, Any]]
    partition: int = -1
    job: Job | None = None  # whose offset it helps finish; None: a caption-cache entry
    durable: Callable[[], None] | None = None  # once it counts as written
    acknowledged: Callable[[], None] | None = None  # once the broker has it for good (metrics)
    failed: Callable[[KafkaError], None] | None = None  # once it cannot be written, with why
    reply: bool = False  # a reply: its topic is the request's to name, any other record's is ours
    wait_when_full: bool = True  # False: a full local queue refuses it (_QUEUE_FULL) instead
    error: KafkaError | None = field(default=None, repr=False)  # its latest delivery report's

    def produce_args(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "partition": self.partition, "headers": self.headers}


class OutcomeSink(Protocol):
    def emit(self, record: OutcomeRecord) -> bool:
        """Hands the record over; False when it was refused at once (its `failed` has run)."""

    def outcome(self) -> AbstractContextManager[object]:
        """Held around all of one job's records (or a batch's): they count as written together."""

    def serve(self) -> None:
        """Delivery reports, and the follow-ups they asked for; called by the worker's loops."""


def refusal(error: KafkaError | Exception) -> KafkaError:
    """A record produce() refused at once, as a permanent error: sending it again would meet the same."""
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        error = error.args[0]
    if isinstance(error, KafkaError):
        return KafkaError(error.code(), error.str())
    return KafkaError(KafkaError._INVALID_ARG, f"{type(error).__name__}: {error}")


class DirectSink:
    """At least once: every record produced at once; it counts once acknowledged, and a failed delivery's
    follow-up runs on the next serve() (a delivery callback must not produce into a full queue, which would
    mean polling the producer inside its own poll)."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._deferred: collections.deque[Callable[[], object]] = collections.deque()

    def emit(self, record: OutcomeRecord) -> bool:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                if record.acknowledged:
                    record.acknowledged()
                if record.durable:
                    record.durable()
            elif record.failed:
                self._deferred.append(functools.partial(record.failed, error))

        while True:
            try:
                self._producer.produce(record.topic, **record.produce_args(), on_delivery=on_delivery)
                return True
            except BufferError:
                if not record.wait_when_full:
                    if record.failed:
                        record.failed(KafkaError(KafkaError._QUEUE_FULL, "the local queue is full"))
                    return False
                self._producer.poll(_QUEUE_FULL_WAIT_S)
            except (KafkaException, TypeError, ValueError) as exc:
                log.error("produce to %s refused: %s", record.topic, exc)
                if record.failed:
                    record.failed(refusal(exc))
                return False

    def outcome(self) -> AbstractContextManager[object]:
        return nullcontext()

    def serve(self) -> None:
        self._producer.poll(0)
        while True:
            try:
                follow_up = self._deferred.popleft()
            except IndexError:  # empty, or another loop took the last one
                return
            follow_up()


class OffsetCommits(Protocol):
    """How a feeder's finished offsets reach its consumer group."""

    def store(self, consumer: Consumer, topics: Collection[str]) -> None:
        """After each poll, on the feeder's thread."""

    def revoked(self, consumer: Consumer, keys: list[PartitionKey]) -> None:
        """Partitions taken away in a rebalance, after their in-flight jobs finished (or the wait ended):
        commit what is finished of them, then forget them."""

    def lost(self, consumer: Consumer, keys: list[PartitionKey]) -> None:
        """Partitions already owned by another member (this one missed its session timeout): forget them."""


class AutoCommits:
    """At least once: finished positions stored for librdkafka's auto-commit; on a revoke, the revoked
    partitions' outcomes flushed and their positions committed before another worker starts on them."""

    # the outcomes produced by the revoked partitions' last jobs are in flight for ms
    REVOKE_FLUSH_S = 5.0

    def __init__(self, *, tracker: OffsetTracker, producer: Producer, waits: KafkaWaits) -> None:
        self._tracker = tracker
        self._producer = producer
        self._waits = waits

    def store(self, consumer: Consumer, topics: Collection[str]) -> None:
        """Hand finished positions to librdkafka, whose auto-commit sends them to the group."""
        positions = self._tracker.take_positions(topics)
        if positions:
            try:
                consumer.store_offsets(offsets=positions)
            except KafkaException as exc:  # revoked meanwhile: its next owner re-runs those jobs
                log.info("could not store offsets %s: %s", positions, exc)

    def revoked(self, consumer: Consumer, keys: list[PartitionKey]) -> None:
        self._waits.flush(self._producer, cap_s=self.REVOKE_FLUSH_S)
        self.store(consumer, {topic for topic, _ in keys})
        if self._waits.reachable():
            try:
                consumer.commit(asynchronous=False)
            except Exception as exc:
                log.info("commit on revoke: %s", exc)
        else:
            log.warning("finished offsets of the revoked partitions not committed: no broker to commit to")
        self._tracker.forget(keys)

    def lost(self, consumer: Consumer, keys: list[PartitionKey]) -> None:
        # A commit for a generation the group has left fails, and the partitions' new owners re-run what
        # it would have covered; tried all the same, as a revoke would.
        self.revoked(consumer, keys)
