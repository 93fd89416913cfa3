from __future__ import annotations

import io
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageFormatError
from core.images import ACCEPTED_FORMATS, ACCEPTED_SUFFIXES, decode_image, inspect_image
from tests.support.images import encode, make_image_bytes, make_picture


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_decodes_common_formats_to_rgb(image_format: str) -> None:
    picture = decode_image(make_image_bytes(image_format), max_pixels=10**6)
    assert picture.mode == "RGB"
    assert picture.size == (96, 72)


def test_large_jpeg_is_decoded_at_reduced_scale_but_not_below_twice_the_target() -> None:
    data = make_image_bytes("JPEG", width=1600, height=1200)
    picture = decode_image(data, max_pixels=10**7, target_edge=224)
    assert picture.size == (800, 600)  # 1/2 scale; 1/4 would leave 300 < 448 on the short side


@pytest.mark.parametrize("data", [b"", b"not an image", make_image_bytes("PNG")[:40]])
def test_undecodable_bytes_are_invalid_images(data: bytes) -> None:
    with pytest.raises(InvalidImageError) as caught:
        decode_image(data, max_pixels=10**6)
    assert caught.value.retriable is False


def test_pixel_limit_is_enforced_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(make_image_bytes("PNG", width=200, height=200), max_pixels=100 * 100)


def jpeg_with_orientation(orientation: int, *, width: int = 60, height: int = 40) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    make_picture(width, height).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def test_exif_orientation_is_applied() -> None:
    assert decode_image(jpeg_with_orientation(6), max_pixels=10**6).size == (40, 60)
    assert decode_image(jpeg_with_orientation(1), max_pixels=10**6).size == (60, 40)


def test_multi_picture_jpeg_from_phones_is_accepted() -> None:
    buffer = io.BytesIO()
    make_picture().save(buffer, format="MPO", save_all=True, append_images=[make_picture(seed=2)])
    data = buffer.getvalue()
    assert inspect_image(data, max_pixels=10**6).content_type == "image/jpeg"
    assert decode_image(data, max_pixels=10**6, target_edge=224).size == (96, 72)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (encode(make_picture(32, 32), "ICO"), "ICO"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(32), "HEIC"),
        (encode(make_picture(), "PPM"), None),
    ],
)
def test_formats_outside_the_allow_list_are_refused_before_any_plugin_decodes_them(
    data: bytes, name: str | None
) -> None:
    with pytest.raises(InvalidImageError) as caught:
        decode_image(data, max_pixels=10**6)
    if name:
        assert isinstance(caught.value, UnsupportedImageFormatError) and name in caught.value.message
        assert caught.value.code == "unsupported_media_type"


@pytest.mark.parametrize(
    ("size", "expected"),
    [((40000, 2), (6, 2)), ((2, 30000), (2, 6)), ((3000, 600), (1800, 600)), ((4000, 3000), (667, 500))],
)
def test_what_reaches_the_processor_is_bounded_whatever_the_shape(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    data = encode(Image.new("RGB", size, "gray"), "PNG")
    assert decode_image(data, max_pixels=24_000_000, target_edge=224).size == expected


@pytest.mark.parametrize(
    "picture",
    [
        Image.new("I;16", (64, 48), 40000),
        Image.new("LA", (64, 48)),
        Image.new("RGBA", (64, 48)),
        make_picture().convert("CMYK"),
        make_picture().convert("P", colors=256),
        Image.new("1", (64, 48)),
    ],
    ids=["16-bit", "LA", "RGBA", "CMYK", "palette", "1-bit"],
)
def test_odd_modes_decode_to_rgb(picture: Image.Image) -> None:
    image_format = "JPEG" if picture.mode == "CMYK" else ("TIFF" if picture.mode == "1" else "PNG")
    assert decode_image(encode(picture, image_format), max_pixels=10**6).mode == "RGB"


@cache
def sample_files() -> dict[str, bytes]:
    return {
        name: make_image_bytes(name, width=64, height=48, seed=9)
        for name in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    }


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(
    image_format=st.sampled_from(["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_mutated_and_truncated_files_decode_or_are_invalid_images(
    image_format: str, flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(sample_files()[image_format])
    for position, value in flips:
        data[position % len(data)] = value
    mutated = bytes(data[: cut % (len(data) + 1)] if cut is not None else data)
    try:
        picture = decode_image(mutated, max_pixels=10**6, target_edge=224)
    except InvalidImageError as error:
        assert "object at 0x" not in error.message and "/" not in error.message.replace("image/", "")
        return
    assert picture.mode == "RGB" and max(picture.size) <= 3 * min(picture.size)


def test_the_accepted_suffixes_are_pillows_own_for_exactly_the_accepted_formats() -> None:
    pillow = {
        suffix: name for suffix, name in Image.registered_extensions().items() if name in ACCEPTED_FORMATS
    }

    assert pillow == ACCEPTED_SUFFIXES
    assert set(ACCEPTED_SUFFIXES.values()) == set(ACCEPTED_FORMATS)
