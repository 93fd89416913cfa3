"""Which dead letters a command looks at: error class, failure time, partition and offset range, ids."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from captioner.dlq.records import DeadLetter, ms_to_datetime
from captioner.errors import UsageError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: datetime) -> int:
    """Epoch ms of an ISO 8601 instant (naive means UTC), an epoch-ms integer, or a time ago (30m, 2h, 7d)."""
    text = text.strip()
    if relative := _RELATIVE.match(text):
        amount, unit = relative.groups()
        try:
            return int((now - timedelta(**{_UNITS[unit]: float(amount)})).timestamp() * 1000)
        except OverflowError:
            raise UsageError(f"not a time: {text!r} is further back than a datetime reaches") from None
    if text.isdigit():
        return int(text)
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (use ISO 8601, epoch milliseconds, or an age such as 30m, 2h, 7d)"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return int(instant.timestamp() * 1000)


@dataclass(frozen=True)
class DeadLetterFilter:
    """All given criteria must hold; several values of one criterion are alternatives. Empty matches all."""

    error_classes: frozenset[str] = frozenset()
    failed_from_ms: int | None = None  # inclusive
    failed_to_ms: int | None = None  # exclusive
    partitions: frozenset[int] = frozenset()
    from_offset: int | None = None  # inclusive, in every selected partition
    to_offset: int | None = None  # inclusive
    ids: frozenset[str] = frozenset()  # correlation ids (or keys of unreadable records)

    def __post_init__(self) -> None:
        if _after(self.from_offset, self.to_offset):
            raise UsageError(f"--from-offset {self.from_offset} is after --to-offset {self.to_offset}")
        if _after(self.failed_from_ms, self.failed_to_ms - 1 if self.failed_to_ms is not None else None):
            raise UsageError("--since must be before --until")

    @property
    def selects_all(self) -> bool:
        return self == DeadLetterFilter()

    def matches(self, record: DeadLetter) -> bool:
        return (
            self.read_range(record.partition, record.offset, record.offset + 1) is not None
            and (not self.error_classes or record.error_class in self.error_classes)
            and (self.failed_from_ms is None or record.failed_at_ms >= self.failed_from_ms)
            and (self.failed_to_ms is None or record.failed_at_ms < self.failed_to_ms)
            and (not self.ids or bool({record.correlation_id, record.key_text} & self.ids))
        )

    def read_range(self, partition: int, start: int, end: int) -> tuple[int, int] | None:
        """The part of offsets [start, end) of a partition that can hold matching records, if any."""
        if self.partitions and partition not in self.partitions:
            return None
        if self.from_offset is not None:
            start = max(start, self.from_offset)
        if self.to_offset is not None:
            end = min(end, self.to_offset + 1)
        return (start, end) if start < end else None

    def to_json(self) -> dict[str, Any]:
        """Canonical form: sorted values, unset criteria left out."""
        fields: dict[str, Any] = {
            "error_classes": sorted(self.error_classes),
            "failed_from_ms": self.failed_from_ms,
            "failed_to_ms": self.failed_to_ms,
            "partitions": sorted(self.partitions),
            "from_offset": self.from_offset,
            "to_offset": self.to_offset,
            "ids": sorted(self.ids),
        }
        return {name: value for name, value in fields.items() if value not in (None, [])}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeadLetterFilter:
        return cls(
            error_classes=frozenset(data.get("error_classes", ())),
            failed_from_ms=data.get("failed_from_ms"),
            failed_to_ms=data.get("failed_to_ms"),
            partitions=frozenset(data.get("partitions", ())),
            from_offset=data.get("from_offset"),
            to_offset=data.get("to_offset"),
            ids=frozenset(data.get("ids", ())),
        )

    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def describe(self) -> str:
        parts = [
            _values("error class", self.error_classes),
            _instant("failed at or after", self.failed_from_ms),
            _instant("failed before", self.failed_to_ms),
            _values("partition", self.partitions),
            f"offset >= {self.from_offset}" if self.from_offset is not None else "",
            f"offset <= {self.to_offset}" if self.to_offset is not None else "",
            _values("id", self.ids),
        ]
        return ", ".join(part for part in parts if part) or "all records"


def _after(first: int | None, last: int | None) -> bool:
    return first is not None and last is not None and first > last


def _values(label: str, values: Iterable[object]) -> str:
    listed = sorted(str(value) for value in values)
    return f"{label} {' or '.join(listed)}" if listed else ""


def _instant(label: str, epoch_ms: int | None) -> str:
    return f"{label} {ms_to_datetime(epoch_ms).isoformat()}" if epoch_ms is not None else ""
