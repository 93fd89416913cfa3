"""A record taken from a request or retry topic, and what the worker learned about it.

Headers are as hostile as the value: each one the worker reads is parsed here, once, and a malformed
one is treated as absent. Nothing in this module raises on what a record carries.
"""

from __future__ import annotations

import re
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

import torch
from confluent_kafka import Message

from core.cache_keys import SCOPE_HEX, SHARED_SCOPE
from inference_consumer.tracing import JobTrace
from schemas import CaptionRequest
from schemas import headers as record_headers
from schemas.framing import Framing

# Kafka's own rule for topic names; also what a replayed-from marker must look like.
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_REPLAYED_FROM = re.compile(r"[A-Za-z0-9._-]{1,249}:\d{1,10}:\d{1,19}")
_MAX_ATTEMPT = 1000
_MAX_INT32 = 2**31 - 1
_MAX_INT64 = 2**63 - 1
_KEY_SHOWN_BYTES = 128


def header_map(message: Message) -> dict[str, bytes]:
    """Headers by name; none at all when the client cannot read them (a name that is not UTF-8 makes
    confluent-kafka raise SystemError)."""
    try:
        raw = message.headers() or []
    except Exception:
        return {}
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {
        name: value.encode() if isinstance(value, str) else value
        for name, value in pairs
        if isinstance(name, str) and isinstance(value, bytes | str)
    }


def int_header(headers: dict[str, bytes], name: str, *, low: int, high: int) -> int | None:
    """A decimal ASCII header within [low, high]; None when absent or malformed."""
    raw = headers.get(name)
    if raw is None or not 0 < len(raw) <= 20 or not raw.isdigit():
        return None
    value = int(raw)
    return value if low <= value <= high else None


def legal_topic_name(name: str) -> bool:
    return TOPIC_NAME.fullmatch(name) is not None and name not in (".", "..")


def shown_key(key: bytes | None) -> str:
    """A record key for a log line: cut to 128 bytes and escaped, so that a hostile key can neither
    flood the log nor forge a line (a newline, a terminal escape)."""
    if key is None:
        return "without a key"
    text = key[:_KEY_SHOWN_BYTES].decode("utf-8", "backslashreplace")
    shown = "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in text)
    cut = f"... ({len(key)} bytes)" if len(key) > _KEY_SHOWN_BYTES else ""
    return f"key '{shown}'{cut}"


def position(message: Message) -> tuple[str, int, int]:
    """Topic, partition, offset of a consumed (not an error) message."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record was first published."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    topic: str
    partition: int | None  # None: the key chooses
    correlation_id: str  # the reply's field and key ("" for an undecodable record whose key is no id)
    headers: tuple[tuple[str, bytes], ...] = ()  # put on every reply (Spring's kafka_correlationId)


@dataclass(slots=True)
class Job:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes = field(repr=False)  # the record holds the image
    headers: dict[str, bytes]
    timestamp_ms: int
    attempt: int = 1
    generation: int = 0  # the OffsetTracker's, for this record's partition assignment
    request: CaptionRequest | None = None
    framing: Framing = Framing.SINGLE_OBJECT  # the request's; its replies are written in it
    reply_to: ReplyAddress | None = None  # set once the request's reply address is known to be good
    pixels: Future[torch.Tensor] | None = field(default=None, repr=False)
    decode_started: float | None = field(default=None, repr=False)  # time.monotonic() when a thread took it
    trace: JobTrace | None = field(default=None, repr=False)  # set once the worker takes the record

    @classmethod
    def from_message(cls, message: Message) -> Job:
        topic, partition, offset = position(message)
        headers = header_map(message)
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=message.key(),
            value=message.value() or b"",
            headers=headers,
            timestamp_ms=message.timestamp()[1],
            attempt=int_header(headers, record_headers.ATTEMPT, low=1, high=_MAX_ATTEMPT) or 1,
        )

    @property
    def replayed(self) -> bool:
        marker = self.headers.get(record_headers.REPLAYED_FROM, b"")
        return _REPLAYED_FROM.fullmatch(marker.decode("ascii", "replace")) is not None

    def retry_due_ms(self) -> int:
        return int_header(self.headers, record_headers.RETRY_DUE_MS, low=0, high=_MAX_INT64) or 0

    def expired(self, now: datetime) -> bool:
        """Past its deadline its caller has been answered 504; a replayed job runs regardless."""
        return self.request is not None and self.request.deadline <= now and not self.replayed

    @property
    def cache_scope(self) -> str | None:
        """The caption-cache scope its title is filed under: shared without the header; None (no entry)
        when the header is not 32 lowercase hex digits."""
        raw = self.headers.get(record_headers.CACHE_SCOPE)
        if raw is None:
            return SHARED_SCOPE
        scope = raw.decode("ascii", "replace")
        return scope if SCOPE_HEX.fullmatch(scope) else None

    @property
    def correlation_id(self) -> str | None:
        return self.request.correlation_id if self.request else None

    @property
    def name(self) -> str:
        """The job in a log line: its correlation id once decoded, else its record key, escaped."""
        return self.correlation_id or shown_key(self.key)

    @property
    def trace_id(self) -> str | None:
        return self.trace.trace_id if self.trace else None

    def origin(self) -> Origin:
        """Where the record was first published: from its headers when all four are well formed."""
        topic = self.headers.get(record_headers.ORIGINAL_TOPIC, b"").decode("ascii", "replace")
        partition = int_header(self.headers, record_headers.ORIGINAL_PARTITION, low=0, high=_MAX_INT32)
        offset = int_header(self.headers, record_headers.ORIGINAL_OFFSET, low=0, high=_MAX_INT64)
        timestamp = int_header(self.headers, record_headers.ORIGINAL_TIMESTAMP_MS, low=0, high=_MAX_INT64)
        if legal_topic_name(topic) and partition is not None and offset is not None and timestamp is not None:
            return Origin(topic, partition, offset, timestamp)
        return Origin(self.topic, self.partition, self.offset, self.timestamp_ms)
