from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastavro import parse_schema, schemaless_writer

from schemas import (
    REPLY_CODEC,
    REQUEST_CODEC,
    CaptionReply,
    CaptionRequest,
    NotSingleObjectError,
    ReplyError,
    ReplyStatus,
    TrailingBytesError,
    TruncatedRecordError,
    UnknownFingerprintError,
)
from schemas.codec import HEADER_SIZE, MAGIC
from schemas.registry import SCHEMA_DIR, versions


def ms(moment: datetime) -> datetime:
    """Avro timestamp-millis keeps milliseconds."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def make_request(**overrides: object) -> CaptionRequest:
    now = ms(datetime.now(UTC))
    fields: dict[str, object] = {
        "correlation_id": "c-1",
        "image": b"\xff\xd8\xffimage-bytes",
        "content_type": "image/jpeg",
        "reply_topic": "results",
        "deadline": now + timedelta(seconds=30),
        "created_at": now,
    }
    return CaptionRequest(**(fields | overrides))  # type: ignore[arg-type]


def test_request_round_trips_with_single_object_header() -> None:
    request = make_request(reply_partition=3, max_new_tokens=12)

    encoded = REQUEST_CODEC.encode(request)

    assert encoded[:2] == MAGIC
    assert encoded[2:HEADER_SIZE] == versions("caption_request")[-1].fingerprint
    assert REQUEST_CODEC.decode(encoded) == request


def test_reply_round_trips_with_error() -> None:
    reply = CaptionReply(
        correlation_id="c-1",
        status=ReplyStatus.FAILED,
        model="m",
        worker_id="w",
        error=ReplyError(code="invalid_image", message="nope", retriable=False),
        completed_at=ms(datetime.now(UTC)),
    )
    assert REPLY_CODEC.decode(REPLY_CODEC.encode(reply)) == reply


def test_image_bytes_are_raw_not_base64() -> None:
    image = bytes(range(256))
    assert image in REQUEST_CODEC.encode(make_request(image=image))


@pytest.mark.parametrize("name", ["caption_request", "caption_reply", "caption_cache_entry"])
def test_schemas_are_parsed_once_and_write_the_same_bytes(name: str) -> None:
    """fastavro parses a schema again on every record unless it carries its parsed mark; with the mark
    the records are byte for byte what the plain schema writes."""
    import io

    codec = {"caption_request": REQUEST_CODEC, "caption_reply": REPLY_CODEC}.get(name)
    for schema in versions(name):
        assert schema.parsed.get("__fastavro_parsed") is True, schema.path
    if codec is None:
        return
    record = (
        make_request()
        if codec is REQUEST_CODEC
        else CaptionReply(
            correlation_id="c-1", status=ReplyStatus.SUCCEEDED, model="m", worker_id="w", title="a title"
        )
    )
    plain = parse_schema(json.loads(codec.writer.path.read_text()), _write_hint=False)
    body = io.BytesIO()
    schemaless_writer(body, plain, codec.to_datum(record))  # type: ignore[arg-type]
    assert codec.encode(record) == MAGIC + codec.writer.fingerprint + body.getvalue()


def test_fingerprint_is_crc64_avro_little_endian_of_canonical_form() -> None:
    # The Avro spec's reference value for the schema "int" is 0x7275d51a3f395c8f (Java's long),
    # written little-endian after C3 01; check our registry's method reproduces that.
    from fastavro.schema import fingerprint

    assert bytes.fromhex(fingerprint('"int"', "CRC-64-AVRO")) == (0x7275D51A3F395C8F).to_bytes(8, "little")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", TruncatedRecordError),
        (b"\xc3", TruncatedRecordError),
        (b"{}", NotSingleObjectError),
        (b"random garbage bytes on the topic", NotSingleObjectError),
        (MAGIC + b"\x00" * 8 + b"body", UnknownFingerprintError),
    ],
)
def test_unreadable_bytes_raise_typed_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        REQUEST_CODEC.decode(data)


def test_truncated_body_is_detected() -> None:
    encoded = REQUEST_CODEC.encode(make_request())
    with pytest.raises(TruncatedRecordError):
        REQUEST_CODEC.decode(encoded[:-5])


def test_trailing_bytes_have_their_own_error() -> None:
    encoded = REQUEST_CODEC.encode(make_request())
    with pytest.raises(TrailingBytesError) as caught:
        REQUEST_CODEC.decode(encoded + b"\x00")
    assert not isinstance(caught.value, TruncatedRecordError)
    assert caught.value.code == "trailing_bytes"


def test_errors_are_not_retriable() -> None:
    with pytest.raises(UnknownFingerprintError) as caught:
        REQUEST_CODEC.decode(MAGIC + b"\x01" * 8)
    assert caught.value.retriable is False


def test_older_writer_version_is_resolved_to_the_current_reader(tmp_path: object) -> None:
    """A v1 writer without the optional fields still decodes once its schema is registered."""
    current = json.loads((SCHEMA_DIR / "v1" / "caption_request.avsc").read_text())
    older = dict(current, fields=[f for f in current["fields"] if f["name"] != "max_new_tokens"])
    import io

    from fastavro.schema import fingerprint, to_parsing_canonical_form

    from schemas.registry import SchemaVersion

    parsed = parse_schema(older, _write_hint=False)
    old_version = SchemaVersion(
        name="caption_request",
        version=0,
        parsed=parsed,  # type: ignore[arg-type]
        fingerprint=bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")),
    )
    REQUEST_CODEC._by_fingerprint[old_version.fingerprint] = old_version
    try:
        request = make_request()
        body = io.BytesIO()
        datum = {k: v for k, v in REQUEST_CODEC.to_datum(request).items() if k != "max_new_tokens"}
        schemaless_writer(body, parsed, datum)
        decoded = REQUEST_CODEC.decode(MAGIC + old_version.fingerprint + body.getvalue())
    finally:
        del REQUEST_CODEC._by_fingerprint[old_version.fingerprint]
    assert decoded == request
    assert decoded.max_new_tokens is None
