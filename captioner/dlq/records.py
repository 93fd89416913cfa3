"""A dead-letter record as read from the DLQ topic: its position, its headers, and its request if readable."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from schemas import REQUEST_CODEC, CaptionerError, CaptionRequest
from schemas import headers as names

Headers = tuple[tuple[str, bytes], ...]

# Headers the worker writes about one failed attempt; a replayed record starts afresh without them.
ATTEMPT_HEADERS = frozenset(
    {
        names.ATTEMPT,
        names.RETRY_DUE_MS,
        names.RETRY_ERROR_CLASS,
        names.RETRY_ERROR_MESSAGE,
        names.DLQ_ERROR_CLASS,
        names.DLQ_ERROR_CODE,
        names.DLQ_ERROR_MESSAGE,
        names.DLQ_ERROR_STACK,
        names.DLQ_CONSUMER_GROUP,
        names.DLQ_WORKER_ID,
        names.DLQ_FAILED_AT_MS,
        names.REPLAYED_FROM,
    }
)


ORIGIN_HEADERS = (
    names.ORIGINAL_TOPIC,
    names.ORIGINAL_PARTITION,
    names.ORIGINAL_OFFSET,
    names.ORIGINAL_TIMESTAMP_MS,
)

# Headers are hostile input: anyone who can write to the DLQ, or to the request topic (whose headers the
# worker carries along), sets them. Values that do not parse as what they claim to be count as absent.
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")  # what Kafka accepts as a topic name
_DECIMAL = re.compile(r"-?[0-9]{1,19}")  # ASCII only: int() would also take "1_0", " 7" or Arabic digits
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_EPOCH_MS = -62_135_596_800_000  # 0001-01-01: the range a datetime holds
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999
LABEL_LIMIT = 200  # characters of an error class or code kept: `list` counts by them


def header_pairs(raw: Any) -> Headers:
    """confluent-kafka gives headers as a list of (name, bytes | None), or None."""
    pairs = raw.items() if isinstance(raw, dict) else raw or []
    return tuple(
        (name, value.encode() if isinstance(value, str) else value)
        for name, value in pairs
        if value is not None
    )


def ms_to_datetime(epoch_ms: int) -> datetime:
    """Clamped to the range a datetime holds: timestamps come from headers and producers' clocks."""
    return _EPOCH + timedelta(milliseconds=min(max(epoch_ms, MIN_EPOCH_MS), MAX_EPOCH_MS))


def parse_decimal(value: bytes | None, *, low: int, high: int) -> int | None:
    """An ASCII decimal within [low, high], else None."""
    text = value.decode("ascii", "replace") if value is not None and len(value) <= 20 else ""
    if not _DECIMAL.fullmatch(text):
        return None
    number = int(text)
    return number if low <= number <= high else None


def parse_topic(value: bytes | None) -> str | None:
    text = value.decode("ascii", "replace") if value is not None and len(value) <= 249 else ""
    return text if TOPIC_NAME.fullmatch(text) else None


@dataclass(frozen=True)
class Origin:
    """Where a dead letter was first published, from its four original.* headers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    def headers(self) -> list[tuple[str, bytes]]:
        values = (self.topic, self.partition, self.offset, self.timestamp_ms)
        return [(name, str(value).encode()) for name, value in zip(ORIGIN_HEADERS, values, strict=True)]


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: Headers
    headers_unreadable: bool = False  # the client could not decode them (a header name not UTF-8)
    # Either framing where a schema registry is configured (schemas/framing.py).
    decode_request: Callable[[bytes], CaptionRequest] = field(
        default=REQUEST_CODEC.decode, repr=False, compare=False
    )

    @classmethod
    def from_message(
        cls, message: Any, *, decode_request: Callable[[bytes], CaptionRequest] = REQUEST_CODEC.decode
    ) -> DeadLetter:
        try:
            headers, unreadable = header_pairs(message.headers()), False
        except (SystemError, UnicodeDecodeError):  # confluent-kafka's C code fails on a non-UTF-8 name
            headers, unreadable = (), True
        return cls(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=message.timestamp()[1],
            key=message.key(),
            value=message.value() or b"",
            headers=headers,
            headers_unreadable=unreadable,
            decode_request=decode_request,
        )

    @property
    def position(self) -> str:
        """How REPLAYED_FROM names this record: "<topic>:<partition>:<offset>"."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def raw_header(self, name: str) -> bytes | None:
        """The last value of a header (the worker writes each one once)."""
        return next((value for header_name, value in reversed(self.headers) if header_name == name), None)

    def header(self, name: str) -> str | None:
        value = self.raw_header(name)
        return value.decode("utf-8", "backslashreplace") if value is not None else None

    def int_header(self, name: str, *, low: int = 0, high: int = INT64_MAX) -> int | None:
        return parse_decimal(self.raw_header(name), low=low, high=high)

    def _label(self, name: str) -> str:
        text = self.header(name)
        if not text:
            return "unknown"
        return text if len(text) <= LABEL_LIMIT else f"{text[:LABEL_LIMIT]}..."

    @property
    def error_class(self) -> str:
        return self._label(names.DLQ_ERROR_CLASS)

    @property
    def error_code(self) -> str:
        return self._label(names.DLQ_ERROR_CODE)

    @property
    def failed_at_ms(self) -> int:
        """When the worker gave up; the DLQ record's own timestamp if the header is missing or malformed."""
        failed_at = self.int_header(names.DLQ_FAILED_AT_MS, high=MAX_EPOCH_MS)
        return failed_at if failed_at is not None else self.timestamp_ms

    @property
    def original_topic(self) -> str | None:
        """None if the header is missing or not a topic name (non-ASCII, too long, other characters)."""
        return parse_topic(self.raw_header(names.ORIGINAL_TOPIC))

    @property
    def origin(self) -> Origin | None:
        """Where the record was first published; None unless all four original.* headers parse."""
        topic = self.original_topic
        partition = self.int_header(names.ORIGINAL_PARTITION, high=INT32_MAX)
        offset = self.int_header(names.ORIGINAL_OFFSET)
        timestamp_ms = self.int_header(names.ORIGINAL_TIMESTAMP_MS, high=MAX_EPOCH_MS)
        if topic is None or partition is None or offset is None or timestamp_ms is None:
            return None
        return Origin(topic, partition, offset, timestamp_ms)

    @property
    def key_text(self) -> str | None:
        return self.key.decode("utf-8", "backslashreplace") if self.key is not None else None

    @cached_property
    def _decoded(self) -> CaptionRequest | CaptionerError:
        try:
            return self.decode_request(self.value)
        except CaptionerError as exc:  # unreadable, or a registry that cannot say how to read it
            return exc

    @property
    def request(self) -> CaptionRequest | None:
        return self._decoded if isinstance(self._decoded, CaptionRequest) else None

    @property
    def decode_error(self) -> str | None:
        decoded = self._decoded
        return f"{type(decoded).__name__}: {decoded}" if isinstance(decoded, Exception) else None

    @property
    def correlation_id(self) -> str | None:
        """The request's correlation id; for an unreadable value, the key (the API keys by it)."""
        request = self.request
        return request.correlation_id if request is not None else self.key_text

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The origin, rewritten from its parsed values (or left out whole if any part is missing or
        malformed: the worker then takes the replay for a new record), any foreign headers, no attempt or
        error headers, plus REPLAYED_FROM. Without `captioner.attempt` the worker counts the replay as
        attempt 1."""
        origin = self.origin.headers() if self.origin is not None else []
        dropped = ATTEMPT_HEADERS | set(ORIGIN_HEADERS)
        kept = [(name, value) for name, value in self.headers if name not in dropped]
        return [*origin, *kept, (names.REPLAYED_FROM, self.position.encode())]
