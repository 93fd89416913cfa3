"""Reads the DLQ topic by assigning partitions (no group membership) between offsets fixed up front.

`list` and `show` never commit; `replay` commits its own progress through `commit`, explicitly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from captioner.dlq.errors import TopicMissingError
from captioner.dlq.filters import DeadLetterFilter
from captioner.dlq.records import DeadLetter
from captioner.errors import KafkaUnavailableError
from core.consuming import poll_batch
from core.kafka_config import consumer_config
from core.logs import LIBRDKAFKA_LOG
from core.settings import KafkaSettings, TopicSettings
from schemas import REQUEST_CODEC, CaptionRequest

READER_GROUP = "captioner-dlq-reader"  # librdkafka wants a group.id; readers never commit to it

PartitionRanges = dict[int, tuple[int, int]]  # partition -> [start, end) offsets
_BATCH = 100


def describe_kafka_error(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def require_topic(client: Any, topic: str, *, timeout_s: float) -> list[int]:
    """The topic's partitions; raises if the cluster does not answer or has no such topic."""
    try:
        metadata = client.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailableError(f"Kafka unreachable: {describe_kafka_error(exc)}") from None
    found = metadata.topics.get(topic)
    if found is None or (found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        raise TopicMissingError(topic)
    if found.error is not None:
        raise KafkaUnavailableError(f"topic {topic!r}: {found.error.str()}")
    return sorted(found.partitions)


@contextmanager
def open_dead_letter_topic(
    kafka: KafkaSettings,
    topics: TopicSettings,
    *,
    topic: str,
    timeout_s: float,
    group_id: str = READER_GROUP,
    decode_request: Callable[[bytes], CaptionRequest] = REQUEST_CODEC.decode,
) -> Iterator[DeadLetterTopic]:
    config = consumer_config(
        kafka,
        topics,
        client_id="captioner-dlq",
        group_id=group_id,
        **{"enable.auto.commit": False, "enable.partition.eof": True, "logger": LIBRDKAFKA_LOG},
    )
    consumer = Consumer(config)
    try:
        yield DeadLetterTopic(consumer, topic, timeout_s=timeout_s, decode_request=decode_request)
    finally:
        consumer.close()


class DeadLetterTopic:
    def __init__(
        self,
        consumer: Consumer,
        name: str,
        *,
        timeout_s: float,
        decode_request: Callable[[bytes], CaptionRequest] = REQUEST_CODEC.decode,
    ) -> None:
        self._consumer = consumer
        self._decode_request = decode_request
        self.name = name
        self._timeout_s = timeout_s

    def watermarks(self) -> dict[int, tuple[int, int]]:
        """Low and high watermark of every partition; raises if the topic is missing."""
        return {
            partition: self._watermarks(partition)
            for partition in require_topic(self._consumer, self.name, timeout_s=self._timeout_s)
        }

    def _watermarks(self, partition: int) -> tuple[int, int]:
        try:
            found = self._consumer.get_watermark_offsets(
                TopicPartition(self.name, partition), timeout=self._timeout_s, cached=False
            )
        except KafkaException as exc:
            message = f"offsets of {self.name}[{partition}]: {describe_kafka_error(exc)}"
            raise KafkaUnavailableError(message) from None
        if found is None:
            raise KafkaUnavailableError(f"offsets of {self.name}[{partition}]: no answer")
        low, high = found
        return int(low), int(high)

    def committed(self, partitions: list[int]) -> dict[int, int | None]:
        """This consumer's group's committed position per partition (None where it has none)."""
        try:
            found = self._consumer.committed(
                [TopicPartition(self.name, partition) for partition in partitions], timeout=self._timeout_s
            )
        except KafkaException as exc:
            raise KafkaUnavailableError(f"committed offsets: {describe_kafka_error(exc)}") from None
        return {tp.partition: None if tp.offset == OFFSET_INVALID else tp.offset for tp in found}

    def commit(self, positions: dict[int, int], *, metadata: str) -> None:
        offsets = [
            TopicPartition(self.name, partition, offset, metadata=metadata)
            for partition, offset in sorted(positions.items())
        ]
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise KafkaUnavailableError(f"commit failed: {describe_kafka_error(exc)}") from None
        failed = [f"[{tp.partition}]: {tp.error.str()}" for tp in results or [] if tp.error is not None]
        if failed:
            raise KafkaUnavailableError(f"commit failed for {self.name}{', '.join(failed)}")

    def read(
        self, ranges: PartitionRanges, *, stop: threading.Event | None = None
    ) -> Generator[DeadLetter, None, None]:
        """Records of each partition from start up to (not including) end, partitions interleaved."""
        remaining = {partition: end for partition, (start, end) in ranges.items() if start < end}
        if not remaining:
            return
        self._consumer.assign([TopicPartition(self.name, p, ranges[p][0]) for p in remaining])
        try:
            while remaining and not _stopped(stop):
                for message in self._next_batch(stop):
                    record = self._take(message, remaining)
                    if record is not None:
                        yield record
        finally:
            self._consumer.unassign()

    def read_at(self, partition: int, offset: int) -> DeadLetter | None:
        low, high = self.watermarks().get(partition, (0, 0))
        if not low <= offset < high:
            return None
        with closing(self.read({partition: (offset, offset + 1)})) as records:
            record = next(records, None)
        return record if record is not None and record.offset == offset else None

    def _next_batch(self, stop: threading.Event | None) -> list[Any]:
        give_up = time.monotonic() + self._timeout_s
        while time.monotonic() < give_up and not _stopped(stop):
            messages: list[Any] = poll_batch(self._consumer, max_messages=_BATCH, timeout_s=0.2)
            if messages:
                return messages
        if _stopped(stop):
            return []
        raise KafkaUnavailableError(f"no records from {self.name} within {self._timeout_s:g} s")

    def _take(self, message: Any, remaining: dict[int, int]) -> DeadLetter | None:
        """The message as a record if it is wanted; partitions are dropped from `remaining` at their end."""
        partition = message.partition()
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                remaining.pop(partition, None)
                return None
            raise KafkaUnavailableError(f"reading the dead-letter topic: {error.str()}")
        end = remaining.get(partition)
        if end is None or message.offset() >= end:
            remaining.pop(partition, None)
            return None
        if message.offset() >= end - 1:
            remaining.pop(partition)
        return DeadLetter.from_message(message, decode_request=self._decode_request)


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def plan_ranges(
    watermarks: dict[int, tuple[int, int]],
    selection: DeadLetterFilter,
    starts: dict[int, int | None] | None = None,
) -> PartitionRanges:
    """What to read of each partition: from its start (committed position, else low watermark) to its
    high watermark, narrowed to the filter's partitions and offsets."""
    ranges: PartitionRanges = {}
    for partition, (low, high) in sorted(watermarks.items()):
        start = max(low, (starts or {}).get(partition) or low)
        narrowed = selection.read_range(partition, start, high)
        if narrowed is not None:
            ranges[partition] = narrowed
    return ranges
