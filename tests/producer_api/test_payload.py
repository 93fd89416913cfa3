from __future__ import annotations

import base64
import json

import pytest

from core.errors import InvalidImageError, UnsupportedImageFormatError
from producer_api.errors import MalformedRequestError, PayloadTooLargeError
from producer_api.payload import (
    MAX_JSON_CONTAINERS,
    MAX_MULTIPART_PARTS,
    BodyKind,
    BodyPlan,
    image_from_json,
    image_from_multipart,
    prepare_upload,
)
from tests.support.images import make_image_bytes


def as_json(document: object) -> bytes:
    return json.dumps(document).encode()


def form(*parts: bytes, boundary: bytes = b"B") -> bytes:
    return (
        b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"
    )


def image_part(content: bytes, name: bytes = b"image", extra: bytes = b"") -> bytes:
    return (
        b'Content-Disposition: form-data; name="'
        + name
        + b'"; filename="a.png"\r\n'
        + extra
        + b"\r\n"
        + content
    )


def test_json_base64_image_is_read() -> None:
    image = make_image_bytes("PNG")
    assert image_from_json(as_json({"image": base64.b64encode(image).decode()}), 10**6) == image


def test_data_url_and_line_breaks_are_accepted() -> None:
    image = make_image_bytes("JPEG")
    encoded = base64.encodebytes(image).decode()  # with newlines every 76 characters
    assert image_from_json(as_json({"image": "data:image/jpeg;base64," + encoded}), 10**6) == image


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        as_json({"img": "aGk="}),
        as_json({"image": 5}),
        as_json({"image": "%%%"}),
        b"\xff",
        b'{"image": "aGk=", "image": "aGk="}',
        b"[" * (MAX_JSON_CONTAINERS + 1),
        b'{"image": 1' + b"0" * 100_000 + b"}",
        b'{"image": -Infinity}',
    ],
)
def test_malformed_json_bodies(body: bytes) -> None:
    with pytest.raises(MalformedRequestError) as caught:
        image_from_json(body, 10**6)
    assert "Error" not in caught.value.message


def test_decoded_size_limit() -> None:
    with pytest.raises(PayloadTooLargeError):
        image_from_json(as_json({"image": base64.b64encode(b"x" * 101).decode()}), 100)


def test_multipart_image_part_is_read_after_other_parts_and_a_preamble() -> None:
    image = make_image_bytes("PNG")
    body = b"preamble\r\n" + form(b'Content-Disposition: form-data; name="note"\r\n\r\nhi', image_part(image))
    assert image_from_multipart(body, b"B", 10**6) == image


@pytest.mark.parametrize(
    "body",
    [
        form(b"Content-Type: text/plain\r\n\r\nno name"),
        form(image_part(b"x", name=b"picture")),
        b"--B\r\n" + image_part(b"no closing delimiter"),
        b"no delimiter at all",
        form(image_part(b"aGk=", extra=b"Content-Transfer-Encoding: base64\r\n")),
        form(*[b'Content-Disposition: form-data; name="f"\r\n\r\n'] * MAX_MULTIPART_PARTS, image_part(b"x")),
        b"--B\r\n" + b"X-Long: " + b"h" * 20_000 + b"\r\n\r\n",
    ],
    ids=[
        "no-name",
        "other-name",
        "unterminated",
        "no-delimiter",
        "base64-part",
        "too-many-parts",
        "long-header",
    ],
)
def test_malformed_multipart_bodies(body: bytes) -> None:
    with pytest.raises(MalformedRequestError):
        image_from_multipart(body, b"B", 10**6)


def test_multipart_image_size_limit() -> None:
    with pytest.raises(PayloadTooLargeError):
        image_from_multipart(form(image_part(b"x" * 101)), b"B", 100)


def test_prepare_upload_names_the_content_type_and_checks_the_image() -> None:
    plan = BodyPlan(kind=BodyKind.IMAGE, limit=10**6, reserve=10**6)
    upload = prepare_upload(make_image_bytes("PNG"), plan, max_image_bytes=10**6, max_pixels=10**6)
    assert upload.content_type == "image/png"
    with pytest.raises(UnsupportedImageFormatError):
        prepare_upload(make_image_bytes("ICO"), plan, max_image_bytes=10**6, max_pixels=10**6)
    with pytest.raises(InvalidImageError) as caught:
        prepare_upload(b"garbage", plan, max_image_bytes=10**6, max_pixels=10**6)
    assert "0x" not in caught.value.message
