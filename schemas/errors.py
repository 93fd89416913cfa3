"""Errors raised while reading records. None of them is retriable: the bytes will not change."""

from __future__ import annotations


class SchemaContractError(Exception):
    """A record does not follow the published contract."""

    retriable = False
    code = "schema_error"


class RecordDecodeError(SchemaContractError):
    """The bytes could not be read as a record of the expected type."""


class NotSingleObjectError(RecordDecodeError):
    """The bytes do not start with the Avro single-object marker C3 01."""

    code = "not_single_object"


class UnknownFingerprintError(RecordDecodeError):
    """The writer schema's fingerprint is not one we know."""

    code = "unknown_fingerprint"

    def __init__(self, fingerprint: bytes, record_name: str) -> None:
        super().__init__(
            f"unknown writer schema fingerprint {fingerprint.hex()} for {record_name}; "
            "publish with a schema from schemas/ (see schemas/README.md)"
        )
        self.fingerprint = fingerprint


class TruncatedRecordError(RecordDecodeError):
    """The body ended before the record did, or trailing bytes follow it."""

    code = "truncated_record"
