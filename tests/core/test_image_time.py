"""What one image can cost in time: each format's structures that would make its decoders work far past
what their pixels need are refused from the bytes (core.image_structure), before a decoder sees them;
what real encoders write still decodes. Figures: `python -m bench.image_cost` (docs/security.md)."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core import images as core_images
from core.errors import CaptionerError, ImageTooCostlyError, InvalidImageError, UnsupportedImageFormatError
from core.image_structure import (
    BMP_RLE_MAX_PIXELS,
    GIF_MAX_BLOCKS,
    JPEG_MAX_MARKERS,
    JPEG_MAX_PADDING,
    JPEG_MAX_SCANS,
    PNG_MAX_CHUNKS,
    TIFF_MAX_STRIPS,
    TIFF_MAX_TAGS,
    check_decoding_cost,
    jpeg_scans,
)
from core.images import decode_image, inspect_image
from tests.support.images import (
    animated_webp,
    encode,
    gif_with_blocks,
    jpeg_scan_count,
    make_image_bytes,
    make_picture,
    mpo_with,
    png_chunk_flood,
    png_with,
    progressive_jpeg,
    rle_bmp,
    scan_bomb,
    tiff,
)

MAX_PIXELS = 24_000_000


def refusal(data: bytes) -> CaptionerError:
    with pytest.raises(CaptionerError) as caught:
        decode_image(data, max_pixels=MAX_PIXELS, target_edge=224)
    return caught.value


def assert_too_costly(data: bytes) -> ImageTooCostlyError:
    error = refusal(data)
    assert isinstance(error, ImageTooCostlyError), error
    assert (error.code, error.http_status, error.retriable) == ("image_too_costly", 422, False)
    return error


@pytest.fixture
def no_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any image that reaches Pillow fails the test: a refusal must come from the walk of the bytes."""

    def opened(*_args: object, **_kwargs: object) -> Image.Image:
        raise AssertionError("a decoder was handed the image")

    monkeypatch.setattr(core_images.Image, "open", opened)


# --- JPEG ------------------------------------------------------------------------------------------------


def test_a_scan_bomb_is_refused_from_its_markers_before_any_decoder_sees_it(no_decoder: None) -> None:
    bomb = scan_bomb()  # 4000x4000 grey, 10,006 scans of a few dozen bytes each
    assert jpeg_scan_count(bomb) == 10_006

    error = assert_too_costly(bomb)
    with pytest.raises(ImageTooCostlyError):
        inspect_image(bomb, max_pixels=MAX_PIXELS)  # what the API runs

    assert f"more than {JPEG_MAX_SCANS} scans" in error.message
    assert "Error" not in error.message and "/" not in error.message  # plain, caller-safe


@pytest.mark.parametrize(
    ("mode", "color", "scans"),
    [("RGB", (200, 30, 90), 10), ("L", 77, 6), ("CMYK", (1, 2, 3, 4), 18)],
    ids=["colour", "grey", "cmyk"],
)
def test_real_encoders_progressive_jpegs_decode(mode: str, color: tuple[int, ...] | int, scans: int) -> None:
    data = progressive_jpeg(300, 200, mode=mode, color=color)  # libjpeg's own scan script
    assert jpeg_scan_count(data) == scans

    assert jpeg_scans(data) == scans  # the walk counts what the encoder wrote
    assert decode_image(data, max_pixels=MAX_PIXELS).size == (300, 200)


def test_a_progressive_photo_decodes() -> None:
    buffer = io.BytesIO()
    make_picture(640, 480).save(buffer, "JPEG", progressive=True, optimize=True, quality=90)
    photo = buffer.getvalue()

    assert jpeg_scans(photo) == jpeg_scan_count(photo) == 10
    assert decode_image(photo, max_pixels=MAX_PIXELS, target_edge=224).size == (640, 480)


def test_the_scan_limit_is_inclusive() -> None:
    at_limit = scan_bomb(64, 48, scans=JPEG_MAX_SCANS)

    assert decode_image(at_limit, max_pixels=MAX_PIXELS).size == (64, 48)
    assert_too_costly(scan_bomb(64, 48, scans=JPEG_MAX_SCANS + 1))


def test_an_mpo_is_held_to_the_limit_by_its_first_picture_the_one_decoded() -> None:
    normal, bomb = make_image_bytes("JPEG", seed=2), scan_bomb(96, 72, scans=500)

    decodable = mpo_with(normal, bomb)
    assert jpeg_scans(decodable) == jpeg_scan_count(normal) == 1
    assert inspect_image(decodable, max_pixels=MAX_PIXELS).format == "MPO"
    assert decode_image(decodable, max_pixels=MAX_PIXELS).size == (96, 72)
    assert_too_costly(mpo_with(bomb, normal))


def segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def with_header(segments: bytes) -> bytes:
    data = make_image_bytes("JPEG")
    return data[:2] + segments + data[2:]


@pytest.mark.parametrize(
    ("header", "limit"),
    [
        (b"\xff\xfe\x00\x02" * JPEG_MAX_MARKERS, f"more than {JPEG_MAX_MARKERS} markers"),
        (b"\xff" * (JPEG_MAX_PADDING + 2) + b"\xfe\x00\x02", "bytes of padding"),
        (segment(0xFE, b"") + bytes(JPEG_MAX_PADDING + 1), "bytes of padding"),
        (segment(0xDB, (b"\x00" + bytes(range(1, 65))) * 1000) * 2, "quantization tables"),
        (segment(0xED, b"Photoshop 3.0\x00" + (b"8BIM\x04\x04\x00\x00" + bytes(4)) * 5000) * 6, "Photoshop"),
        (segment(0xE1, b"Exif\x00\x00" + bytes(65000)) * 5, "Exif data"),
    ],
    ids=["markers", "fill", "stray-bytes", "quantization-tables", "photoshop", "exif"],
)
def test_headers_pillow_would_parse_step_by_step_in_python_are_refused(
    no_decoder: None, header: bytes, limit: str
) -> None:
    assert limit in assert_too_costly(with_header(header)).message


def test_a_header_marker_libjpeg_fails_at_is_refused_by_the_apis_check_already() -> None:
    # Pillow's parser takes JPG0 (FFF0) for a marker without a length and reads on; libjpeg stops there,
    # so the picture never decodes: the API says so rather than publish it.
    with pytest.raises(InvalidImageError) as caught:
        inspect_image(with_header(b"\xff\xf0" + b"\xff\xfe\x00\x02" * 10), max_pixels=MAX_PIXELS)
    assert type(caught.value) is InvalidImageError


def test_scans_after_a_marker_libjpeg_fails_at_are_not_counted() -> None:
    bomb = scan_bomb(64, 48, scans=JPEG_MAX_SCANS * 2)
    first_scan = bomb.index(b"\xff\xda")
    after = bomb.index(b"\xff\xc4", first_scan)  # the tables before the second scan
    cut = bomb[:after] + b"\xff\xf0" + bomb[after:]  # libjpeg fails here, after one scan

    assert jpeg_scans(cut) == 1


# --- the other formats -------------------------------------------------------------------------------------


def test_png_chunks_are_bounded() -> None:
    at_limit = png_chunk_flood(PNG_MAX_CHUNKS - 3)  # with IHDR, IDAT and IEND
    assert decode_image(at_limit, max_pixels=MAX_PIXELS).size == (16, 16)

    for flood in (
        png_chunk_flood(PNG_MAX_CHUNKS),
        png_chunk_flood(PNG_MAX_CHUNKS, after_data=True),
        png_with(make_picture(200, 200), fragment=2),  # the image data in two-byte IDAT chunks
    ):
        assert "chunks" in assert_too_costly(flood).message


def test_gif_blocks_before_the_first_picture_are_bounded() -> None:
    assert decode_image(gif_with_blocks(GIF_MAX_BLOCKS - 1), max_pixels=MAX_PIXELS).size == (16, 16)

    assert_too_costly(gif_with_blocks(GIF_MAX_BLOCKS))
    data = encode(Image.new("P", (8, 8)), "GIF")
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # past the global palette
    assert_too_costly(data[:at] + b"\x01" * (GIF_MAX_BLOCKS + 1) + data[at:])  # bytes Pillow skips one by one


def test_rle_bmps_which_pillow_decodes_in_python_are_bounded() -> None:
    runs = b"\x04\x01\x00\x00" + b"\x00\x01"
    assert decode_image(rle_bmp(4, 1, runs), max_pixels=MAX_PIXELS).size == (4, 1)
    rows = (b"\xfa\x12" * 4 + b"\x00\x00") * 1000 + b"\x00\x01"  # four runs of 250 pixels a row
    assert decode_image(rle_bmp(1000, 1000, rows, rle4=True), max_pixels=MAX_PIXELS).size == (1000, 1000)

    # An end of line pads the row in a Python loop, a byte at a time: six bytes of RLE, 24M steps.
    assert_too_costly(rle_bmp(24_000_000, 1, b"\x01\x00\x00\x00\x00\x01"))
    assert_too_costly(rle_bmp(1000, BMP_RLE_MAX_PIXELS // 1000 + 1, runs))
    assert_too_costly(rle_bmp(100, 100, b"\x00\x02\x00\x00" * 300_000))  # escapes that move nowhere


def test_tiff_strips_are_bounded_by_the_offsets_held_and_by_the_layout() -> None:
    assert decode_image(tiff(8, 512, strip=bytes(8), rows_per_strip=1), max_pixels=MAX_PIXELS).size == (
        8,
        512,
    )

    assert_too_costly(tiff(2, TIFF_MAX_STRIPS + 1, strip=bytes(2), rows_per_strip=1))
    # One offset, but libtiff lays the page out in a strip per row.
    assert_too_costly(tiff(1, TIFF_MAX_STRIPS + 1, strip=bytes(1), rows_per_strip=1, strips=1, compression=5))


def test_a_progressive_jpeg_inside_a_tiff_is_held_to_the_jpeg_limit() -> None:
    strip = progressive_jpeg(64, 48)
    assert decode_image(tiff(64, 48, strip=strip, compression=7), max_pixels=MAX_PIXELS).size == (64, 48)

    assert_too_costly(tiff(64, 48, strip=scan_bomb(64, 48, scans=JPEG_MAX_SCANS + 1), compression=7))


def test_a_tiff_directory_is_bounded_and_its_compression_one_we_decode() -> None:
    assert_too_costly(tiff(8, 8, strip=bytes(64), extra_entries=TIFF_MAX_TAGS))

    unsupported = refusal(tiff(8, 8, strip=bytes(64), compression=34676))  # SGI LogLuv
    assert isinstance(unsupported, UnsupportedImageFormatError) and unsupported.http_status == 415


def test_a_tiff_tag_twice_is_not_decodable() -> None:
    data = tiff(8, 8, strip=bytes(64))
    twice = data.replace(struct.pack("<HHI", 259, 3, 1), struct.pack("<HHI", 273, 3, 1), 1)  # offsets again

    assert type(refusal(twice)) is InvalidImageError


def test_an_animated_webp_decodes_its_first_frame_only() -> None:
    # No WebP limit: libwebp demuxes the frames in C and decodes the first alone (bench.image_cost).
    assert decode_image(animated_webp(50_000), max_pixels=MAX_PIXELS).size == (1, 1)


# --- the walks never fail on hostile bytes ------------------------------------------------------------------


@cache
def base_files() -> tuple[bytes, ...]:
    return (
        progressive_jpeg(40, 30, mode="RGB", color=(1, 2, 3)),
        scan_bomb(32, 16, scans=JPEG_MAX_SCANS + 3),
        mpo_with(
            make_image_bytes("JPEG", width=24, height=16), make_image_bytes("JPEG", width=16, height=16)
        ),
        make_image_bytes("PNG", width=24, height=16),
        gif_with_blocks(3, size=(8, 8)),
        rle_bmp(4, 2, b"\x04\x01\x00\x00\x04\x02\x00\x01"),
        tiff(64, 48, strip=progressive_jpeg(64, 48), compression=7),
        make_image_bytes("TIFF", width=24, height=16),
    )


MUTATION_BYTES = [
    b"\xff",
    b"\xff\xda",
    b"\xff\xd9",
    b"\xff\x00",
    b"\xff\xd8",
    b"\x00\x00",
    b"\xff\xff",
    b"\x21",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(base_files())))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        change = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        piece = draw(st.one_of(st.sampled_from(MUTATION_BYTES), st.binary(min_size=1, max_size=4)))
        if change == "set":
            data[at : at + len(piece)] = piece
        elif change == "insert":
            data[at:at] = piece
        elif change == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated())
def test_the_walks_end_on_any_bytes_with_nothing_but_the_error_family(data: bytes) -> None:
    try:
        check_decoding_cost(data)
    except CaptionerError as error:
        assert isinstance(error, InvalidImageError)


@pytest.mark.parametrize(
    "truncate",
    [lambda data: data[:3], lambda data: data[:-1], lambda data: data[: len(data) // 2]],
    ids=["header", "last-byte", "half"],
)
def test_truncated_files_of_each_format_are_walked_without_error(truncate: Callable[[bytes], bytes]) -> None:
    for data in base_files():
        try:
            check_decoding_cost(truncate(data))
        except CaptionerError as error:
            assert isinstance(error, InvalidImageError)
