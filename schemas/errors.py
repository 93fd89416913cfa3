"""The project's error base, and the errors raised while reading records.

The base lives here, in the bottom layer, so that every package's errors are one family: a stable
`code` and a `retriable` flag that callers route on. `message` is safe to show a caller; `detail` is for
operators only (logs and dead-letter headers). What a code means to a transport (an HTTP status, an exit
status) is said at that transport's edge: producer_api/errors.py, captioner/cli.py."""

from __future__ import annotations

from typing import Any


class CaptionerError(Exception):
    code = "internal_error"
    retriable = False

    def __init__(self, message: str, *, detail: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.fields = fields


class SchemaContractError(CaptionerError):
    """A record does not follow the published contract. Never retriable: the bytes will not change."""

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
    """The body ended before the record did."""

    code = "truncated_record"


class TrailingBytesError(RecordDecodeError):
    """Bytes follow the end of the record: not what any Avro writer produces."""

    code = "trailing_bytes"


class UnknownSchemaIdError(RecordDecodeError):
    """A registry-framed record names a schema id the registry does not have."""

    code = "unknown_schema_id"

    def __init__(self, schema_id: int) -> None:
        super().__init__(
            f"schema id {schema_id} is not in the schema registry; register the writer schema under the "
            "topic's subject (see schemas/README.md)"
        )
        self.schema_id = schema_id


class WriterSchemaMismatchError(RecordDecodeError):
    """The registry's writer schema does not resolve to ours: another record type, another schema type, or a
    change the registry's compatibility rule should have refused."""

    code = "schema_mismatch"


class SchemaRegistryUnavailableError(CaptionerError):
    """The registry did not answer in time, or answered with a server error: the record may read later."""

    code = "schema_registry_unavailable"
    retriable = True


class SchemaLookupsLimitedError(SchemaRegistryUnavailableError):
    """More schema ids not yet cached than the look-up budget allows right now (a flood of unknown ids)."""

    code = "schema_lookups_limited"


class SchemaRegistrationError(CaptionerError):
    """The registry refused our schema under a subject (an incompatible schema is registered there)."""

    code = "schema_registration_refused"
