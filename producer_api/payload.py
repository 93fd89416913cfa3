"""Reads the image out of a request: JSON base64 (the seed's contract), multipart, or a raw image body.

The headers alone decide how many bytes a body may have (plan_body); the body is then read whole,
within that bound, and parsed and checked off the event loop (prepare_upload). Every parser here is
bounded by the body it is given: JSON may hold only a few objects and values, multipart only its
first parts, and no message quotes the body or a library's exception text.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import hdrs, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import parse_content_disposition

from core.cache_keys import image_sha256
from core.errors import CaptionerError
from core.images import inspect_image
from producer_api.errors import (
    MalformedRequestError,
    PayloadTooLargeError,
    TooManyItemsError,
    UnsupportedMediaTypeError,
)

READ_CHUNK_BYTES = 256 * 1024
# {"image": "<base64>"} needs one object and one value; these leave room for a few more fields
# while keeping what a body of brackets or commas costs to parse (tens of bytes an object) bounded.
MAX_JSON_CONTAINERS = 64
MAX_JSON_VALUES = 256
MAX_MULTIPART_PARTS = 16
MAX_PART_HEADER_BYTES = 8 * 1024
_WHITESPACE = b" \t\r\n\f\v"
_PLAIN_ENCODINGS = {"binary", "7bit", "8bit"}
_JSON_SHAPE = 'the JSON body must be an object with a base64 string field "image"'
_JSON_BATCH_SHAPE = 'the JSON body must be an object with a non-empty list "images" of {"image": "<base64>"}'
_MULTIPART_SHAPE = f'the multipart body needs an "image" part among its first {MAX_MULTIPART_PARTS} parts'
# What a batch holds at its peak, in multiples of its body: a JSON body is held as bytes, as text, as the
# parsed base64 strings and as the decoded images (3/4 of the strings); a multipart body as bytes and as
# the images sliced out of it. A batch reserves this much of the byte budget, not just its body.
JSON_BATCH_HOLD_FACTOR = 4
MULTIPART_BATCH_HOLD_FACTOR = 2


class BodyKind(StrEnum):
    JSON = "json"
    MULTIPART = "multipart"
    IMAGE = "image"


@dataclass(frozen=True, slots=True)
class BodyPlan:
    """What the headers promise: the body's kind, the most bytes it may have, and the bytes to reserve:
    hold_factor times the body's bytes, for a body whose parsing holds copies of it."""

    kind: BodyKind
    limit: int
    reserve: int
    boundary: bytes = b""
    hold_factor: int = 1

    def held(self, body_bytes: int) -> int:
        """What a body of body_bytes holds while it is parsed: what its reservation shrinks to once read."""
        return body_bytes * self.hold_factor


@dataclass(frozen=True, slots=True)
class ImageUpload:
    data: bytes
    content_type: str
    sha256: str = ""  # of data, for the caption cache; "" when not computed


def max_body_bytes(max_image_bytes: int) -> int:
    # base64 grows data by 4/3; leave room for JSON or multipart framing.
    return max_image_bytes * 4 // 3 + 64 * 1024


def plan_body(request: web.BaseRequest, *, max_image_bytes: int) -> BodyPlan:
    """From the headers only: 415 for a Content-Type we do not read, 413 for a declared length over
    the bound, and how many bytes to reserve before reading."""
    kind, boundary = _body_kind(request)
    limit = max_image_bytes if kind is BodyKind.IMAGE else max_body_bytes(max_image_bytes)
    return _plan(request, kind, limit, boundary)


def plan_batch_body(request: web.BaseRequest, *, max_batch_bytes: int) -> BodyPlan:
    """plan_body for a batch: JSON or multipart only, its whole body bounded by max_batch_bytes, and what
    parsing it holds reserved (JSON_BATCH_HOLD_FACTOR or MULTIPART_BATCH_HOLD_FACTOR times the body)."""
    kind, boundary = _body_kind(request)
    if kind is BodyKind.IMAGE:
        raise UnsupportedMediaTypeError(
            "unsupported Content-Type; send a batch as application/json or multipart/form-data"
        )
    hold_factor = JSON_BATCH_HOLD_FACTOR if kind is BodyKind.JSON else MULTIPART_BATCH_HOLD_FACTOR
    return _plan(request, kind, max_batch_bytes, boundary, hold_factor=hold_factor)


def _body_kind(request: web.BaseRequest) -> tuple[BodyKind, bytes]:
    content_type = request.content_type
    if content_type == "application/json":
        return BodyKind.JSON, b""
    if content_type == "multipart/form-data":
        return BodyKind.MULTIPART, _boundary(request.headers.get(hdrs.CONTENT_TYPE, ""))
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return BodyKind.IMAGE, b""
    raise UnsupportedMediaTypeError(
        "unsupported Content-Type; send application/json, multipart/form-data or image/*"
    )


def _plan(
    request: web.BaseRequest, kind: BodyKind, limit: int, boundary: bytes, *, hold_factor: int = 1
) -> BodyPlan:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLargeError(f"the request body may have at most {limit} bytes", limit=limit)
    # A compressed body is counted as it is decompressed, so only its bound is known in advance.
    encoded = request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity"
    body_bytes = limit if declared is None or encoded else declared
    return BodyPlan(
        kind=kind,
        limit=limit,
        reserve=body_bytes * hold_factor,
        boundary=boundary,
        hold_factor=hold_factor,
    )


async def read_body(request: web.BaseRequest, *, limit: int) -> bytes:
    """The whole body, at most limit bytes (413 beyond); a broken or abandoned body is a 400."""
    chunks = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"the request body may have at most {limit} bytes", limit=limit)
            chunks.append(chunk)
    except (ConnectionError, HttpProcessingError):
        raise MalformedRequestError("the request body ended early or is not valid HTTP") from None
    return b"".join(chunks)


def prepare_upload(body: bytes, plan: BodyPlan, *, max_image_bytes: int, max_pixels: int) -> ImageUpload:
    """The image out of the body, checked by core.images. Blocking: run it in an executor."""
    if plan.kind is BodyKind.JSON:
        data = image_from_json(body, max_image_bytes)
    elif plan.kind is BodyKind.MULTIPART:
        data = image_from_multipart(body, plan.boundary, max_image_bytes)
    else:
        data = body
    return checked_upload(data, max_pixels=max_pixels)


def checked_upload(data: bytes, *, max_pixels: int) -> ImageUpload:
    """One image's bytes, checked by core.images (4xx errors). Blocking: run it in an executor."""
    if not data:
        raise MalformedRequestError("the request holds no image bytes")
    info = inspect_image(data, max_pixels=max_pixels)
    return ImageUpload(data=data, content_type=info.content_type, sha256=image_sha256(data))


def batch_images(
    body: bytes, plan: BodyPlan, *, max_items: int, max_image_bytes: int
) -> list[bytes | CaptionerError]:
    """Each image of a batch body, in order, or the error of that item; the batch's own faults (not
    JSON, no images, more than max_items) raise. Blocking: run it in an executor."""
    if plan.kind is BodyKind.JSON:
        return images_from_json_batch(body, max_items, max_image_bytes)
    return images_from_multipart_batch(body, plan.boundary, max_items, max_image_bytes)


class _RejectedJsonError(ValueError):
    """Raised from the JSON parser's hooks; its message is ours and safe to show."""


def image_from_json(body: bytes, max_image_bytes: int) -> bytes:
    document = _parse_json(body, max_containers=MAX_JSON_CONTAINERS, max_values=MAX_JSON_VALUES)
    encoded = document.get("image") if isinstance(document, dict) else None
    if not isinstance(encoded, str) or not encoded:
        raise MalformedRequestError(_JSON_SHAPE)
    return _decode_base64(encoded, max_image_bytes)


def images_from_json_batch(body: bytes, max_items: int, max_image_bytes: int) -> list[bytes | CaptionerError]:
    """{"images": [{"image": "<base64>"}, ...]}: each item checked on its own."""
    # Room for twice max_items, so a batch somewhat over the limit is told so (413), not a 400.
    document = _parse_json(
        body,
        max_containers=2 * max_items + MAX_JSON_CONTAINERS,
        max_values=4 * max_items + MAX_JSON_VALUES,
    )
    items = document.get("images") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise MalformedRequestError(_JSON_BATCH_SHAPE)
    if len(items) > max_items:
        raise TooManyItemsError(f"a batch may hold at most {max_items} images", limit=max_items)
    results: list[bytes | CaptionerError] = []
    for index, item in enumerate(items):
        encoded = item.get("image") if isinstance(item, dict) else None
        items[index] = None  # each item's text is dropped once it is decoded
        try:
            if not isinstance(encoded, str) or not encoded:
                raise MalformedRequestError(_JSON_SHAPE)
            results.append(_decode_base64(encoded, max_image_bytes))
        except CaptionerError as error:
            results.append(error)
    return results


def _decode_base64(encoded: str, max_image_bytes: int) -> bytes:
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        ascii_text = encoded.encode("ascii").translate(None, delete=_WHITESPACE)
        if len(ascii_text) // 4 * 3 > max_image_bytes + 2:
            raise PayloadTooLargeError(
                f"the image may have at most {max_image_bytes} bytes", limit=max_image_bytes
            )
        data = binascii.a2b_base64(ascii_text, strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MalformedRequestError('"image" is not valid base64') from None
    if len(data) > max_image_bytes:
        raise PayloadTooLargeError(
            f"the image may have at most {max_image_bytes} bytes", limit=max_image_bytes
        )
    return data


def _parse_json(body: bytes, *, max_containers: int, max_values: int) -> Any:
    if body.count(b"[") + body.count(b"{") > max_containers or body.count(b",") >= max_values:
        raise MalformedRequestError(
            f"the JSON body may hold at most {max_containers} objects and arrays and {max_values} values"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequestError("the JSON body is not UTF-8 text") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_int=_opaque_number,
            parse_float=_opaque_number,
            parse_constant=_no_constant,
        )
    except _RejectedJsonError as exc:
        raise MalformedRequestError(str(exc)) from None
    except json.JSONDecodeError as exc:  # where, but not the parser's own words
        raise MalformedRequestError(
            f"the body is not valid JSON (at line {exc.lineno}, column {exc.colno})"
        ) from None
    except (RecursionError, ValueError):
        raise MalformedRequestError("the body is not valid JSON") from None


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _RejectedJsonError("the JSON body has a key twice")
    return document


class _Number:
    """Numbers stand for themselves: never converted, so 10^6 digits or 1e999999 cost nothing."""


_NUMBER = _Number()


def _opaque_number(_text: str) -> _Number:
    return _NUMBER


def _no_constant(name: str) -> Any:
    raise _RejectedJsonError("NaN and Infinity are not JSON")


def _boundary(content_type_header: str) -> bytes:
    boundary = parse_mimetype(content_type_header).parameters.get("boundary", "")
    if not 1 <= len(boundary) <= 70 or not boundary.isascii():
        raise MalformedRequestError("multipart/form-data needs a boundary of 1 to 70 ASCII characters")
    return boundary.encode("ascii")


def image_from_multipart(body: bytes, boundary: bytes, max_image_bytes: int) -> bytes:
    """The content of the first part named "image" among the first MAX_MULTIPART_PARTS (RFC 7578)."""
    for headers, start, end in _multipart_parts(body, boundary, MAX_MULTIPART_PARTS):
        if _part_name(headers) == "image":
            return _image_part(body, headers, start, end, max_image_bytes)
    raise MalformedRequestError(_MULTIPART_SHAPE)


def images_from_multipart_batch(
    body: bytes, boundary: bytes, max_items: int, max_image_bytes: int
) -> list[bytes | CaptionerError]:
    """Every part named "image", in order; other parts are skipped (at most MAX_MULTIPART_PARTS of them)."""
    results: list[bytes | CaptionerError] = []
    for headers, start, end in _multipart_parts(body, boundary, max_items + MAX_MULTIPART_PARTS):
        if _part_name(headers) != "image":
            continue
        if len(results) == max_items:
            raise TooManyItemsError(f"a batch may hold at most {max_items} images", limit=max_items)
        try:
            results.append(_image_part(body, headers, start, end, max_image_bytes))
        except CaptionerError as error:
            results.append(error)
    if not results:
        raise MalformedRequestError(_MULTIPART_SHAPE)
    return results


def _multipart_parts(body: bytes, boundary: bytes, max_parts: int) -> Iterator[tuple[list[bytes], int, int]]:
    """Each part's headers and where its content starts and ends, up to the closing delimiter; a body
    with more than max_parts parts is a 400 once the caller has read that many."""
    delimiter = b"--" + boundary
    next_delimiter = b"\r\n" + delimiter
    if body.startswith(delimiter):
        position = len(delimiter)
    else:  # a preamble comes before the first delimiter
        found = body.find(next_delimiter)
        if found < 0:
            raise MalformedRequestError("the multipart body has no part")
        position = found + len(next_delimiter)
    for _ in range(max_parts):
        if body.startswith(b"--", position):
            return
        headers, content_start = _part_headers(body, position)
        content_end = body.find(next_delimiter, content_start)
        if content_end < 0:
            raise MalformedRequestError("the multipart body ends inside a part")
        yield headers, content_start, content_end
        position = content_end + len(next_delimiter)
    if not body.startswith(b"--", position):
        raise MalformedRequestError(f"a multipart body may have at most {max_parts} parts")


def _part_headers(body: bytes, position: int) -> tuple[list[bytes], int]:
    """A part's header lines and where its content starts; position is just after a delimiter."""
    line_end = body.find(b"\r\n", position, position + MAX_PART_HEADER_BYTES)
    if line_end < 0 or body[position:line_end].strip(b" \t"):
        raise MalformedRequestError("a multipart delimiter is not followed by a line break")
    start = line_end + 2
    if body.startswith(b"\r\n", start):
        return [], start + 2
    end = body.find(b"\r\n\r\n", start, start + MAX_PART_HEADER_BYTES + 4)
    if end < 0:
        raise MalformedRequestError(
            f"a multipart part's headers are missing or longer than {MAX_PART_HEADER_BYTES} bytes"
        )
    return body[start:end].split(b"\r\n"), end + 4


def _header(headers: list[bytes], name: bytes) -> str | None:
    for line in headers:
        key, separator, value = line.partition(b":")
        if separator and key.strip().lower() == name:
            return value.strip().decode("utf-8", "replace")
    return None


def _part_name(headers: list[bytes]) -> str | None:
    disposition = _header(headers, b"content-disposition")
    if disposition is None:
        return None
    _kind, parameters = parse_content_disposition(disposition)
    name = parameters.get("name")
    return name if isinstance(name, str) else None


def _image_part(body: bytes, headers: list[bytes], start: int, end: int, max_image_bytes: int) -> bytes:
    encoding = _header(headers, b"content-transfer-encoding")
    if encoding is not None and encoding.lower() not in _PLAIN_ENCODINGS:
        raise MalformedRequestError("the image part must be sent as binary (no Content-Transfer-Encoding)")
    if end - start > max_image_bytes:
        raise PayloadTooLargeError(
            f"the image may have at most {max_image_bytes} bytes", limit=max_image_bytes
        )
    return body[start:end]
