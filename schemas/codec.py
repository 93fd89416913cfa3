"""Avro single-object encoding (C3 01 + CRC-64-AVRO fingerprint + body) of our records.

Writers use the newest schema version; readers resolve any known writer version to it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar, cast

from fastavro import schemaless_reader, schemaless_writer

from schemas.errors import (
    NotSingleObjectError,
    RecordDecodeError,
    TrailingBytesError,
    TruncatedRecordError,
    UnknownFingerprintError,
)
from schemas.registry import SchemaVersion, versions

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CaptionRequest:
    correlation_id: str
    image: bytes = field(repr=False)  # a log line or an error shows the job, never its image
    content_type: str
    reply_topic: str
    deadline: datetime
    created_at: datetime = field(default_factory=utc_now)
    reply_partition: int | None = None
    max_new_tokens: int | None = None


class ReplyStatus(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class ReplyError:
    code: str
    message: str
    retriable: bool


@dataclass(frozen=True, slots=True)
class CaptionReply:
    correlation_id: str
    status: ReplyStatus
    model: str
    worker_id: str
    title: str | None = None
    error: ReplyError | None = None
    attempt: int = 1
    inference_ms: float = 0.0
    completed_at: datetime = field(default_factory=utc_now)


@dataclass(frozen=True, slots=True)
class CaptionCacheEntry:
    image_sha256: str
    model: str
    max_new_tokens: int
    title: str
    worker_id: str
    correlation_id: str
    attempt: int = 1
    inference_ms: float = 0.0
    completed_at: datetime = field(default_factory=utc_now)
    revision: str = ""
    precision: str = ""
    image_pipeline: str = ""
    scope: str = "shared"


RecordT = TypeVar("RecordT", CaptionRequest, CaptionReply, CaptionCacheEntry)


class RecordCodec(Generic[RecordT]):
    """Encodes and decodes one record type; thread-safe and stateless after construction."""

    def __init__(self, *, schema_name: str, record_type: type[RecordT]) -> None:
        self._versions = versions(schema_name)
        self._by_fingerprint = {schema.fingerprint: schema for schema in self._versions}
        self.writer: SchemaVersion = self._versions[-1]
        self._record_type: type[RecordT] = record_type
        self._field_names = {f.name for f in fields(record_type)}

    def encode(self, record: RecordT) -> bytes:
        buffer = io.BytesIO()
        buffer.write(MAGIC)
        buffer.write(self.writer.fingerprint)
        schemaless_writer(buffer, self.writer.parsed, self.to_datum(record))
        return buffer.getvalue()

    def decode(self, data: bytes) -> RecordT:
        writer = self.writer_of(data)
        body = io.BytesIO(memoryview(data)[HEADER_SIZE:])
        try:
            datum = cast(dict[str, Any], schemaless_reader(body, writer.parsed, self.writer.parsed))
        except (EOFError, StopIteration, IndexError) as exc:
            raise TruncatedRecordError(f"{writer.name} body ends early ({len(data)} bytes)") from exc
        except Exception as exc:  # fastavro raises many types on hostile bodies
            raise RecordDecodeError(
                f"{writer.name} body is not valid Avro", detail=f"{type(exc).__name__}: {exc}"[:500]
            ) from exc
        if body.tell() != len(data) - HEADER_SIZE:
            raise TrailingBytesError(f"{len(data) - HEADER_SIZE - body.tell()} trailing bytes after record")
        try:
            return self.from_datum(datum)
        except (TypeError, ValueError) as exc:
            raise RecordDecodeError(f"{writer.name} has a value outside its type") from exc

    def writer_of(self, data: bytes) -> SchemaVersion:
        if len(data) < HEADER_SIZE:
            if data[: len(MAGIC)] != MAGIC[: len(data)]:
                raise NotSingleObjectError("record does not start with Avro single-object marker C3 01")
            raise TruncatedRecordError(f"record is {len(data)} bytes, shorter than the 10-byte header")
        if data[:2] != MAGIC:
            raise NotSingleObjectError("record does not start with Avro single-object marker C3 01")
        fingerprint = bytes(data[2:HEADER_SIZE])
        try:
            return self._by_fingerprint[fingerprint]
        except KeyError:
            raise UnknownFingerprintError(fingerprint, self.writer.name) from None

    def to_datum(self, record: RecordT) -> dict[str, Any]:
        """The record as fastavro writes it."""
        # A shallow copy: dataclasses.asdict deep-copies every value (the image's bytes, each datetime),
        # which cost more than the Avro encoding itself on a small record.
        datum = _fields_of(record)
        if isinstance(record, CaptionReply):
            datum["status"] = record.status.value
            if record.error is not None:
                datum["error"] = _fields_of(record.error)
        return datum

    def from_datum(self, datum: dict[str, Any]) -> RecordT:
        """The record from what fastavro read with the newest schema as reader; raises TypeError or
        ValueError on a value outside its type."""
        values = {key: value for key, value in datum.items() if key in self._field_names}
        if self._record_type is CaptionReply:
            values["status"] = ReplyStatus(values["status"])
            if values.get("error") is not None:
                values["error"] = ReplyError(**values["error"])
        return self._record_type(**values)


def _fields_of(record: Any) -> dict[str, Any]:
    return {field.name: getattr(record, field.name) for field in fields(record)}


REQUEST_CODEC: RecordCodec[CaptionRequest] = RecordCodec(
    schema_name="caption_request", record_type=CaptionRequest
)
REPLY_CODEC: RecordCodec[CaptionReply] = RecordCodec(schema_name="caption_reply", record_type=CaptionReply)
CACHE_ENTRY_CODEC: RecordCodec[CaptionCacheEntry] = RecordCodec(
    schema_name="caption_cache_entry", record_type=CaptionCacheEntry
)
