"""A record taken from a request or retry topic, and what the worker learned about it."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from confluent_kafka import Message

from schemas import CaptionRequest

ATTEMPT_HEADER = "captioner.attempt"
RETRY_DUE_HEADER = "captioner.retry.due-ms"
ORIGINAL_TOPIC_HEADER = "captioner.original.topic"
ORIGINAL_PARTITION_HEADER = "captioner.original.partition"
ORIGINAL_OFFSET_HEADER = "captioner.original.offset"
ORIGINAL_TIMESTAMP_HEADER = "captioner.original.timestamp-ms"


def header_map(message: Message) -> dict[str, bytes]:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
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
        return int(self.headers.get(ATTEMPT_HEADER, b"1"))

    @property
    def correlation_id(self) -> str | None:
        return self.request.correlation_id if self.request else None

    def origin(self) -> tuple[str, int, int, int]:
        """Where the record was first published: topic, partition, offset, timestamp."""
        if ORIGINAL_TOPIC_HEADER in self.headers:
            return (
                self.headers[ORIGINAL_TOPIC_HEADER].decode(),
                int(self.headers[ORIGINAL_PARTITION_HEADER]),
                int(self.headers[ORIGINAL_OFFSET_HEADER]),
                int(self.headers[ORIGINAL_TIMESTAMP_HEADER]),
            )
        return self.topic, self.partition, self.offset, self.timestamp_ms
