"""A dead-letter record as read from the DLQ topic: its position, its headers, and its request if readable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from schemas import REQUEST_CODEC, CaptionRequest, SchemaContractError
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


def header_pairs(raw: Any) -> Headers:
    """confluent-kafka gives headers as a list of (name, bytes | None), or None."""
    pairs = raw.items() if isinstance(raw, dict) else raw or []
    return tuple(
        (name, value.encode() if isinstance(value, str) else value)
        for name, value in pairs
        if value is not None
    )


def ms_to_datetime(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: Headers

    @classmethod
    def from_message(cls, message: Any) -> DeadLetter:
        return cls(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=message.timestamp()[1],
            key=message.key(),
            value=message.value() or b"",
            headers=header_pairs(message.headers()),
        )

    @property
    def position(self) -> str:
        """How REPLAYED_FROM names this record: "<topic>:<partition>:<offset>"."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        """The last value of a header as text (the worker writes each one once)."""
        for header_name, value in reversed(self.headers):
            if header_name == name:
                return value.decode("utf-8", "backslashreplace")
        return None

    def int_header(self, name: str) -> int | None:
        text = self.header(name)
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    @property
    def error_class(self) -> str:
        return self.header(names.DLQ_ERROR_CLASS) or "unknown"

    @property
    def error_code(self) -> str:
        return self.header(names.DLQ_ERROR_CODE) or "unknown"

    @property
    def failed_at_ms(self) -> int:
        """When the worker gave up; the DLQ record's own timestamp if the header is missing."""
        failed_at = self.int_header(names.DLQ_FAILED_AT_MS)
        return failed_at if failed_at is not None else self.timestamp_ms

    @property
    def original_topic(self) -> str | None:
        return self.header(names.ORIGINAL_TOPIC)

    @property
    def key_text(self) -> str | None:
        return self.key.decode("utf-8", "backslashreplace") if self.key is not None else None

    @cached_property
    def _decoded(self) -> CaptionRequest | SchemaContractError:
        try:
            return REQUEST_CODEC.decode(self.value)
        except SchemaContractError as exc:
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
        """The original.* (and any foreign) headers, no attempt or error headers, plus REPLAYED_FROM.
        Without `captioner.attempt` the worker counts the replay as attempt 1."""
        kept = [(name, value) for name, value in self.headers if name not in ATTEMPT_HEADERS]
        return [*kept, (names.REPLAYED_FROM, self.position.encode())]
