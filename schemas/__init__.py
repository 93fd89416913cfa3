"""Versioned Avro schemas of every record on every topic, and their single-object codec."""

from schemas.codec import (
    CACHE_ENTRY_CODEC,
    REPLY_CODEC,
    REQUEST_CODEC,
    CaptionCacheEntry,
    CaptionReply,
    CaptionRequest,
    RecordCodec,
    ReplyError,
    ReplyStatus,
)
from schemas.errors import (
    CaptionerError,
    NotSingleObjectError,
    RecordDecodeError,
    SchemaContractError,
    TrailingBytesError,
    TruncatedRecordError,
    UnknownFingerprintError,
)

__all__ = [
    "CACHE_ENTRY_CODEC",
    "REPLY_CODEC",
    "REQUEST_CODEC",
    "CaptionCacheEntry",
    "CaptionReply",
    "CaptionRequest",
    "CaptionerError",
    "NotSingleObjectError",
    "RecordCodec",
    "RecordDecodeError",
    "ReplyError",
    "ReplyStatus",
    "SchemaContractError",
    "TrailingBytesError",
    "TruncatedRecordError",
    "UnknownFingerprintError",
]
