"""Test photos made locally: JPEGs from 320x240 to 4000x3000 with photo-like content.

Each picture is a smooth colour field (sky/ground-like gradients), soft-edged random shapes, a mid-frequency
texture and fine sensor-like noise, so JPEG decoding and resizing cost what they cost on real photos
(a blank or flat image would compress to almost nothing and decode unrealistically fast).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Landscape sizes, small to large; every third picture is turned to portrait.
SIZES: tuple[tuple[int, int], ...] = (
    (320, 240),
    (640, 480),
    (800, 600),
    (1024, 768),
    (1280, 960),
    (1600, 1200),
    (2048, 1536),
    (2592, 1944),
    (3264, 2448),
    (4000, 3000),
)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class BenchImage:
    name: str
    width: int
    height: int
    data: bytes

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def image_sizes(count: int) -> list[tuple[int, int]]:
    """`count` sizes spread over SIZES, always including the smallest and the largest."""
    if count < 1:
        raise ValueError("need at least one image")
    picks = np.linspace(0, len(SIZES) - 1, num=count).round().astype(int)
    sizes = [SIZES[int(index)] for index in picks]
    return [(h, w) if position % 3 == 2 else (w, h) for position, (w, h) in enumerate(sizes)]


def make_images(count: int, *, seed: int = 0) -> list[BenchImage]:
    return [
        make_image(width, height, seed=seed + index)
        for index, (width, height) in enumerate(image_sizes(count))
    ]


def make_image(width: int, height: int, *, seed: int) -> BenchImage:
    rng = np.random.default_rng(seed)
    picture = _colour_field(rng, width, height, cells=(3, 4))
    picture = Image.blend(picture, _colour_field(rng, width, height, cells=(12, 16)), alpha=0.3)
    fine = (max(2, height // 12), max(2, width // 12))  # foliage/texture-like detail
    picture = Image.blend(picture, _colour_field(rng, width, height, cells=fine), alpha=0.15)
    picture = _draw_shapes(rng, picture)
    data = _encode(_add_noise(rng, picture))
    return BenchImage(name=f"photo-{seed:02d}-{width}x{height}", width=width, height=height, data=data)


def _colour_field(
    rng: np.random.Generator, width: int, height: int, *, cells: tuple[int, int]
) -> Image.Image:
    """A random low-resolution colour grid, upscaled bicubically: smooth gradients."""
    rows, columns = cells
    grid = rng.integers(0, 256, size=(rows, columns, 3), dtype=np.uint8)
    return Image.fromarray(grid, mode="RGB").resize((width, height), Image.Resampling.BICUBIC)


def _draw_shapes(rng: np.random.Generator, picture: Image.Image) -> Image.Image:
    """Translucent ellipses, rectangles and polygons with softened edges, like objects in a scene."""
    width, height = picture.size
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    scale = min(width, height)
    for _ in range(int(rng.integers(12, 24))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(scale // 20, scale // 3))
        fill = (*(int(c) for c in rng.integers(0, 256, size=3)), int(rng.integers(120, 230)))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x, y, x + size, y + int(size * rng.uniform(0.5, 1.5))), fill=fill)
        elif kind == 1:
            draw.rectangle((x, y, x + int(size * rng.uniform(0.3, 2.0)), y + size), fill=fill)
        else:
            points = [(x + int(dx), y + int(dy)) for dx, dy in rng.integers(-size, size, size=(5, 2))]
            draw.polygon(points, fill=fill)
    layer = layer.filter(ImageFilter.GaussianBlur(max(1.0, scale / 800)))
    return Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB")


def _add_noise(rng: np.random.Generator, picture: Image.Image) -> Image.Image:
    """Fine luminance-correlated grain, as from a camera sensor."""
    pixels = np.asarray(picture, dtype=np.int16)
    grain = rng.integers(-8, 9, size=pixels.shape[:2], dtype=np.int16)[..., None]
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8), mode="RGB")


def _encode(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
