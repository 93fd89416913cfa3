from __future__ import annotations

import pytest

from captioner.errors import ImageTooLargeError, InvalidImageError
from captioner.images import decode_image
from tests.support.images import make_image_bytes


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
