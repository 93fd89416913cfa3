"""Versioned Avro schemas of every record on every topic, and their single-object codec."""

from schemas.codec import (
    REPLY_CODEC,
    REQUEST_CODEC,
    CaptionReply,
    CaptionRequest,
    RecordCodec,
    ReplyError,
    ReplyStatus,
)
from schemas.errors import (
    NotSingleObjectError,
    RecordDecodeError,
    SchemaContractError,
    TruncatedRecordError,
    UnknownFingerprintError,
)

__all__ = [
    "REPLY_CODEC",
    "REQUEST_CODEC",
    "CaptionReply",
    "CaptionRequest",
    "NotSingleObjectError",
    "RecordCodec",
    "RecordDecodeError",
    "ReplyError",
    "ReplyStatus",
    "SchemaContractError",
    "TruncatedRecordError",
    "UnknownFingerprintError",
]
