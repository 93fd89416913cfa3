from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.images import SIZES, image_sizes, make_image


def test_sizes_span_the_range() -> None:
    sizes = image_sizes(12)
    assert len(sizes) == 12
    assert (320, 240) in sizes
    assert (4000, 3000) in sizes or (3000, 4000) in sizes
    assert {tuple(sorted(size)) for size in sizes} <= {tuple(sorted(size)) for size in SIZES}


def test_made_image_is_a_busy_jpeg_of_its_size() -> None:
    image = make_image(640, 480, seed=3)
    picture = Image.open(io.BytesIO(image.data))
    assert picture.format == "JPEG"
    assert picture.size == (640, 480)
    pixels = np.asarray(picture.convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # not blank
    assert np.abs(np.diff(pixels, axis=1)).mean() > 2  # fine detail, as in a photo
    assert make_image(640, 480, seed=3).data == image.data  # deterministic
