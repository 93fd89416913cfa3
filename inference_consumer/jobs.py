"""A record taken from a request or retry topic, and what the worker learned about it."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

import torch
from confluent_kafka import Message

from schemas import CaptionRequest
from schemas import headers as record_headers


def header_map(message: Message) -> dict[str, bytes]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {
        name: value.encode() if isinstance(value, str) else value
        for name, value in pairs
        if value is not None
    }


def position(message: Message) -> tuple[str, int, int]:
    """Topic, partition, offset of a consumed (not an error) message."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


@dataclass(slots=True)
class Job:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp_ms: int
    request: CaptionRequest | None = None
    pixels: Future[torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def from_message(cls, message: Message) -> Job:
        topic, partition, offset = position(message)
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=message.key(),
            value=message.value() or b"",
            headers=header_map(message),
            timestamp_ms=message.timestamp()[1],
        )

    @property
    def attempt(self) -> int:
        return int(self.headers.get(record_headers.ATTEMPT, b"1"))

    @property
    def replayed(self) -> bool:
        return record_headers.REPLAYED_FROM in self.headers

    def expired(self, now: datetime) -> bool:
        """Past its deadline its caller has been answered 504; a replayed job runs regardless."""
        return self.request is not None and self.request.deadline <= now and not self.replayed

    @property
    def correlation_id(self) -> str | None:
        return self.request.correlation_id if self.request else None

    def origin(self) -> tuple[str, int, int, int]:
        """Where the record was first published: topic, partition, offset, timestamp."""
        if record_headers.ORIGINAL_TOPIC in self.headers:
            return (
                self.headers[record_headers.ORIGINAL_TOPIC].decode(),
                int(self.headers[record_headers.ORIGINAL_PARTITION]),
                int(self.headers[record_headers.ORIGINAL_OFFSET]),
                int(self.headers[record_headers.ORIGINAL_TIMESTAMP_MS]),
            )
        return self.topic, self.partition, self.offset, self.timestamp_ms
