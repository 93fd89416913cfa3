from __future__ import annotations

import base64
import json

import pytest

from producer_api.errors import (
    InvalidImageError,
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from producer_api.payload import _image_from_json, identify_image
from tests.support.images import make_image_bytes


def as_json(document: object) -> bytes:
    return json.dumps(document).encode()


def test_json_base64_image_is_read() -> None:
    image = make_image_bytes("PNG")
    assert _image_from_json(as_json({"image": base64.b64encode(image).decode()}), 10**6) == image


def test_data_url_and_line_breaks_are_accepted() -> None:
    image = make_image_bytes("JPEG")
    encoded = base64.encodebytes(image).decode()  # with newlines every 76 characters
    assert _image_from_json(as_json({"image": "data:image/jpeg;base64," + encoded}), 10**6) == image


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", as_json({"img": "aGk="}), as_json({"image": 5}), as_json({"image": "%%%"}), b"\xff"],
)
def test_malformed_json_bodies(body: bytes) -> None:
    with pytest.raises(MalformedRequestError):
        _image_from_json(body, 10**6)


def test_decoded_size_limit() -> None:
    with pytest.raises(PayloadTooLargeError):
        _image_from_json(as_json({"image": base64.b64encode(b"x" * 101).decode()}), 100)


def test_identify_names_the_content_type() -> None:
    assert identify_image(make_image_bytes("PNG"), max_pixels=10**6).content_type == "image/png"
    assert identify_image(make_image_bytes("JPEG"), max_pixels=10**6).content_type == "image/jpeg"


def test_identify_rejects_garbage_unsupported_and_huge() -> None:
    with pytest.raises(InvalidImageError):
        identify_image(b"garbage", max_pixels=10**6)
    with pytest.raises(UnsupportedMediaTypeError):
        identify_image(make_image_bytes("ICO"), max_pixels=10**6)
    with pytest.raises(InvalidImageError):
        identify_image(make_image_bytes("PNG", width=200, height=200), max_pixels=1000)
