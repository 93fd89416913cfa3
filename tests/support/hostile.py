"""Hostile records for the request topic and retry tiers, as hypothesis strategies: any value Avro can
encode in every field, garbage and missing headers, random bytes, valid framing around a bad body,
and bad images."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastavro import parse_schema, schemaless_writer
from hypothesis import strategies as st
from PIL import Image

from schemas import REQUEST_CODEC
from schemas import headers as record_headers
from schemas.codec import MAGIC
from tests.support.images import encode, make_image_bytes, make_picture

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
OUR_HEADERS = [
    record_headers.ATTEMPT,
    record_headers.RETRY_DUE_MS,
    record_headers.ORIGINAL_TOPIC,
    record_headers.ORIGINAL_PARTITION,
    record_headers.ORIGINAL_OFFSET,
    record_headers.ORIGINAL_TIMESTAMP_MS,
    record_headers.REPLAYED_FROM,
]


@dataclass(frozen=True)
class HostileRecord:
    value: bytes | None
    headers: list[tuple[str, bytes]]
    key: bytes | None = None


@cache
def _raw_request_schema() -> Any:
    """The request schema with its logical types stripped, so any long can be written as a time.
    Its Parsing Canonical Form, and so its fingerprint, is the real schema's."""
    raw = json.loads(REQUEST_CODEC.writer.path.read_text())
    for avro_field in raw["fields"]:
        if isinstance(avro_field["type"], dict):
            avro_field["type"] = avro_field["type"]["type"]
    return parse_schema(raw, _write_hint=False)


def encode_raw_request(datum: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(MAGIC + REQUEST_CODEC.writer.fingerprint)
    schemaless_writer(buffer, _raw_request_schema(), datum)
    return buffer.getvalue()


@cache
def bad_images() -> tuple[bytes, ...]:
    """Truncated and mutated files of each accepted format, extreme shapes, odd modes, other formats."""
    files: list[bytes] = []
    for image_format in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        data = make_image_bytes(image_format, seed=3)
        files += [data[: len(data) // 2], data[:20], data[:8] + bytes(64)]
    files.append(encode(Image.new("RGB", (40000, 2)), "PNG"))
    files.append(encode(Image.new("L", (2, 30000)), "PNG"))
    files.append(encode(Image.new("I;16", (64, 48)), "PNG"))
    files.append(encode(make_picture().convert("CMYK"), "JPEG"))
    files.append(encode(make_picture().convert("P", colors=256), "GIF"))
    files.append(b"\x00\x00\x01\x00" + bytes(40))  # ICO
    files.append(b"%!PS-Adobe-3.0 EPSF-3.0\n")  # EPS: never reaches Ghostscript
    return tuple(files)


def images() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=256),
        st.sampled_from(bad_images()),
        st.just(make_image_bytes("PNG", seed=5)),
    )


def request_datums(*, reply_topics: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "correlation_id": st.one_of(
                st.text(max_size=150), st.from_regex(r"[a-f0-9]{32}", fullmatch=True)
            ),
            "image": images(),
            "content_type": st.one_of(st.text(max_size=40), st.sampled_from(["image/png", "image/jpeg"])),
            "reply_topic": st.one_of(st.text(max_size=40), st.sampled_from(reply_topics)),
            "reply_partition": st.one_of(st.none(), INT32, st.integers(-1, 5)),
            "deadline": st.one_of(INT64, st.integers(0, 2**42)),
            "created_at": INT64,
            "max_new_tokens": st.one_of(st.none(), INT32, st.integers(-1, 30)),
        }
    )


SPRING_HEADERS = ["kafka_replyTopic", "kafka_replyPartition", "kafka_correlationId"]


def headers(*, reply_topics: list[str]) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    names = st.one_of(st.sampled_from(OUR_HEADERS + SPRING_HEADERS), st.text(max_size=20))
    values = st.one_of(
        st.binary(max_size=30),
        st.sampled_from([b"x", b"-5", b"0", b"9" * 30, b"\xff", bytes(300)]),
        st.sampled_from(reply_topics).map(str.encode),
        st.integers(-2, 5).map(lambda partition: partition.to_bytes(4, "big", signed=True)),
    )
    return st.lists(st.tuples(names, values), max_size=6)


def record_values(*, reply_topics: list[str]) -> st.SearchStrategy[bytes | None]:
    framed = st.binary(max_size=200).map(lambda body: MAGIC + REQUEST_CODEC.writer.fingerprint + body)
    encoded = request_datums(reply_topics=reply_topics).map(encode_raw_request)
    return st.one_of(
        st.none(),
        st.binary(max_size=300),
        framed,
        encoded,
        encoded.map(lambda value: value + b"\x00"),
        encoded.map(lambda value: value[: len(value) // 2]),
    )


def hostile_records(*, reply_topics: list[str]) -> st.SearchStrategy[HostileRecord]:
    return st.builds(
        HostileRecord,
        value=record_values(reply_topics=reply_topics),
        headers=headers(reply_topics=reply_topics),
        key=st.one_of(st.none(), st.binary(max_size=40)),
    )
