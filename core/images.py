"""Image bytes -> a bounded RGB picture: the one place where both roles open images.

Only the formats in ACCEPTED_FORMATS are ever handed to a Pillow plugin (EPS, PSD and the rest never
reach their parsers or Ghostscript). The pixel limit is checked on the header, before anything is
decoded, so one image costs at most ~7 bytes per allowed pixel to decode (its own mode, at most 4
bytes a pixel, plus the RGB copy). What reaches the model's processor is bounded further: the
centre of pictures wider or taller than MAX_ASPECT_RATIO (the processor centre-crops to a square
anyway, after scaling the short side to the model's edge, which blew a 40000x2 strip up to gigabytes),
reduced by a box filter until its short side is under four times the model's edge. Blocking: run it
on a worker's decode pool or an executor, never on an event loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from core.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageFormatError
from core.image_structure import check_decoding_cost

ACCEPTED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # multi-picture JPEG, as phones save them: the first picture is an ordinary JPEG
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# The file name suffixes of the accepted formats (Pillow's own, for these formats): what a folder of
# images is walked for.
ACCEPTED_SUFFIXES: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".mpo": "MPO",
    ".png": "PNG",
    ".apng": "PNG",
    ".webp": "WEBP",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
ACCEPTED_CONTENT_TYPES = frozenset(
    [*ACCEPTED_FORMATS.values(), "image/mpo", "image/jpg", "image/x-ms-bmp", "application/octet-stream"]
)
MAX_ASPECT_RATIO = 3.0
# Pillow's JPEG opener returns an MPO image itself when the file has a multi-picture index.
_OPENERS = [name for name in ACCEPTED_FORMATS if name != "MPO"]

# Formats people send that we do not decode, recognised by their first bytes so the caller is told
# which format it was (415) rather than that the bytes are garbage (422).
_KNOWN_OTHER_FORMATS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"8BPS", "PSD"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"%PDF", "PDF"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "SVG"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"qoif", "QOI"),
)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What a hostile file can make Pillow raise; anything else is a bug in Pillow or here.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    Image.DecompressionBombError,
)
_NOT_DECODABLE = "the bytes are not a decodable image"


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    content_type: str
    width: int
    height: int


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Reads the header of an image in an accepted format within the pixel limit; decodes nothing.
    Before Pillow parses anything, the format's structure is walked for what would make decoding it
    cost more than a bounded time (core.image_structure)."""
    check_decoding_cost(data)
    try:
        image = Image.open(io.BytesIO(data), formats=_OPENERS)
    except _DECODE_ERRORS as exc:
        other = _known_other_format(data)
        if other is not None:
            raise UnsupportedImageFormatError(
                f"image format {other} is not supported; send one of {accepted_format_names()}"
            ) from None
        raise InvalidImageError(
            f"{_NOT_DECODABLE} in an accepted format ({accepted_format_names()})", detail=_describe(exc)
        ) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"{_NOT_DECODABLE}: it has no pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels", limit=max_pixels
        )
    return image


def inspect_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Format and size from the header, plus the format's own cheap integrity check (PNG chunk CRCs)."""
    image = open_image(data, max_pixels=max_pixels)
    info = ImageInfo(
        format=image.format or "",
        content_type=ACCEPTED_FORMATS[image.format or "JPEG"],
        width=image.size[0],
        height=image.size[1],
    )
    try:
        image.verify()
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(_NOT_DECODABLE, detail=_describe(exc)) from None
    return info


def decode_image(data: bytes, *, max_pixels: int, target_edge: int | None = None) -> Image.Image:
    """Decode to an upright RGB picture. With target_edge (the model's input edge), a JPEG decodes at
    a reduced DCT scale that leaves at least twice target_edge on its short side, and the picture is
    bounded as the module says: what the processor gets costs the same whatever the file was."""
    image = open_image(data, max_pixels=max_pixels)
    try:
        if target_edge and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (2 * target_edge, 2 * target_edge))
        orientation = _orientation(image)
        picture = image.convert("RGB")
        if target_edge:  # before the transpose, which would copy the whole picture again
            picture = bound_picture(picture, target_edge)
        if orientation in _TRANSPOSE_FOR_ORIENTATION:
            picture = picture.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(_NOT_DECODABLE, detail=_describe(exc)) from None
    finally:
        image.close()
    return picture


def bound_picture(picture: Image.Image, target_edge: int) -> Image.Image:
    """The centre of an extreme aspect ratio, reduced while its short side is at least 4x target_edge.
    Ordinary photos up to 4x the model's edge on their short side come back unchanged."""
    width, height = picture.size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        keep_w = min(width, max(1, round(MAX_ASPECT_RATIO * height)))
        keep_h = min(height, max(1, round(MAX_ASPECT_RATIO * width)))
        left, top = (width - keep_w) // 2, (height - keep_h) // 2
        picture = picture.crop((left, top, left + keep_w, top + keep_h))
    factor = min(picture.size) // (2 * target_edge)
    if factor >= 2:
        picture = picture.reduce(factor)
    return picture


def accepted_format_names() -> str:
    return ", ".join(_OPENERS)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 to 8) of an opened image, read from its header."""
    return _orientation(image)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation, 1 (upright) when absent or unreadable: a broken EXIF block never fails an image."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
        return value if isinstance(value, int) else 1
    except Exception:
        return 1


def _known_other_format(data: bytes) -> str | None:
    for offset, magic, name in _KNOWN_OTHER_FORMATS:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
