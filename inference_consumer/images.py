"""Image bytes -> RGB picture, robustly and cheaply. Blocking: runs in the decode pool."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from inference_consumer.errors import ImageTooLargeError, InvalidImageError

_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def decode_image(data: bytes, *, max_pixels: int, target_edge: int | None = None) -> Image.Image:
    """Decode to RGB. With target_edge, a JPEG is decoded at a reduced DCT scale that still
    leaves at least twice target_edge on its short side: large photos decode several times
    faster, and the model still sees a picture resized down from more pixels than it keeps."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except _DECODE_ERRORS as exc:
            raise InvalidImageError(f"not a decodable image: {exc}") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(f"image is {width}x{height}; the limit is {max_pixels} pixels")
        try:
            if target_edge and image.format == "JPEG":
                image.draft("RGB", (2 * target_edge, 2 * target_edge))
            return image.convert("RGB")
        except _DECODE_ERRORS as exc:
            raise InvalidImageError(f"not a decodable image: {exc}") from None
