"""Retry records wait for their `captioner.retry.due-ms` without blocking the poll loop.

A retry tier holds records in due order, so waiting on the head holds the whole partition: it is paused
and rewound to the head, and resumed once the head is due. Other partitions keep flowing meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from confluent_kafka import TopicPartition

from inference_consumer.jobs import Job

PartitionKey = tuple[str, int]


class PausableConsumer(Protocol):
    """What the holds need of a consumer (confluent_kafka.Consumer has it)."""

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition) -> None: ...


class RetryHolds:
    """The retry-tier partitions one consumer has paused, and until when. The due time comes from a
    record header, so it is hostile: no hold lasts longer than `max_hold_s`, the longest retry delay,
    and a record is held at most once, so one with a due time far in the future cannot hold its
    partition again each time the hold ends and it is fetched again."""

    def __init__(
        self,
        consumer: PausableConsumer,
        *,
        retry_topics: Collection[str],
        max_hold_s: float,
        wall_clock_s: Callable[[], float] = time.time,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._retry_topics = retry_topics
        self._max_hold_s = max_hold_s
        self._wall_clock_s = wall_clock_s
        self._monotonic_s = monotonic_s
        self._held_until: dict[PartitionKey, float] = {}
        self._held_offset: dict[PartitionKey, int] = {}  # the last record held, per partition

    def holds(self, topic: str, partition: int) -> bool:
        """A record fetched behind a held head is dropped: it is fetched again after the hold."""
        return (topic, partition) in self._held_until

    def hold_if_not_due(self, job: Job) -> bool:
        """Pause the job's partition at the job when it is a retry record not yet due; True if so."""
        if job.topic not in self._retry_topics:
            return False
        key = (job.topic, job.partition)
        if self._held_offset.get(key) == job.offset:
            return False  # held once already: its hold ended, so it runs now whatever its header says
        wait_s = min(job.retry_due_ms() / 1000 - self._wall_clock_s(), self._max_hold_s)
        if wait_s <= 0:
            return False
        head = TopicPartition(job.topic, job.partition, job.offset)
        self._consumer.pause([head])
        self._consumer.seek(head)
        self._held_until[key] = self._monotonic_s() + wait_s
        self._held_offset[key] = job.offset
        return True

    def release_due(self) -> None:
        """Resume every partition whose hold has ended."""
        now = self._monotonic_s()
        due = [key for key, until in self._held_until.items() if until <= now]
        if due:
            self._consumer.resume([TopicPartition(topic, partition) for topic, partition in due])
            for key in due:
                del self._held_until[key]

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """librdkafka keeps a pause across revoke and reassignment: a partition assigned again starts
        unpaused, and its head is held again if it is still not due."""
        self._consumer.resume(partitions)

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        """Revoked partitions: their holds end with them."""
        for key in keys:
            self._held_until.pop(key, None)
            self._held_offset.pop(key, None)
