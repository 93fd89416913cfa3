"""`dlq list`: dead letters counted by error class, by failure time, and by partition."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from captioner.dlq.records import DeadLetter, ms_to_datetime


class Bucket(StrEnum):
    minute = "minute"
    hour = "hour"
    day = "day"

    @property
    def ms(self) -> int:
        return {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}[self.value]

    def floor(self, epoch_ms: int) -> int:
        return epoch_ms - epoch_ms % self.ms

    def label(self, epoch_ms: int) -> str:
        """The bucket holding epoch_ms, in UTC: 2024-05-01, 2024-05-01T10Z, 2024-05-01T10:15Z."""
        formats = {"minute": "%Y-%m-%dT%H:%MZ", "hour": "%Y-%m-%dT%HZ", "day": "%Y-%m-%d"}
        return ms_to_datetime(epoch_ms).strftime(formats[self.value])


@dataclass
class ErrorCount:
    error_class: str
    error_code: str
    count: int = 0
    first_failed_ms: int | None = None
    last_failed_ms: int | None = None

    def add(self, failed_ms: int) -> None:
        self.count += 1
        first, last = self.first_failed_ms, self.last_failed_ms
        self.first_failed_ms = failed_ms if first is None else min(first, failed_ms)
        self.last_failed_ms = failed_ms if last is None else max(last, failed_ms)


@dataclass
class TimeCount:
    bucket_start_ms: int
    error_class: str
    count: int = 0


@dataclass
class PartitionCount:
    partition: int
    count: int = 0
    first_offset: int | None = None
    last_offset: int | None = None

    def add(self, offset: int) -> None:
        self.count += 1
        self.first_offset = offset if self.first_offset is None else min(self.first_offset, offset)
        self.last_offset = offset if self.last_offset is None else max(self.last_offset, offset)


@dataclass
class Overview:
    topic: str
    selection: str
    bucket: Bucket
    total: int = 0
    by_error: list[ErrorCount] = field(default_factory=list)
    by_time: list[TimeCount] = field(default_factory=list)
    by_partition: list[PartitionCount] = field(default_factory=list)


def summarize(records: Iterable[DeadLetter], *, topic: str, selection: str, bucket: Bucket) -> Overview:
    errors: dict[tuple[str, str], ErrorCount] = {}
    times: dict[tuple[int, str], TimeCount] = {}
    partitions: dict[int, PartitionCount] = {}
    total = 0
    for record in records:
        total += 1
        key = (record.error_class, record.error_code)
        errors.setdefault(key, ErrorCount(*key)).add(record.failed_at_ms)
        slot = (bucket.floor(record.failed_at_ms), record.error_class)
        times.setdefault(slot, TimeCount(*slot)).count += 1
        partitions.setdefault(record.partition, PartitionCount(record.partition)).add(record.offset)
    return Overview(
        topic=topic,
        selection=selection,
        bucket=bucket,
        total=total,
        by_error=sorted(errors.values(), key=lambda e: (-e.count, e.error_class, e.error_code)),
        by_time=[times[slot] for slot in sorted(times)],
        by_partition=[partitions[p] for p in sorted(partitions)],
    )
