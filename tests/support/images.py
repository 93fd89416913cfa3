"""Image factories: deterministic pictures with real structure (gradients, shapes, noise)."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_picture(width: int = 96, height: int = 72, *, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1
    ) * rng.uniform(0.3, 1.0, size=3)
    pixels = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype("uint8")
    picture = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(picture)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1, y1 = x0 + int(rng.integers(4, width // 2)), y0 + int(rng.integers(4, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.ellipse((x0, y0, x1, y1), fill=color)
    return picture


def encode(picture: Image.Image, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format)
    return buffer.getvalue()


def make_image_bytes(
    image_format: str = "JPEG", *, width: int = 96, height: int = 72, seed: int = 0
) -> bytes:
    return encode(make_picture(width, height, seed=seed), image_format)


class ReferenceCaptioner:
    """Plain processor + model.generate + batch_decode: the answer the service must give."""

    def __init__(self, model_dir: Path, *, max_new_tokens: int = 20) -> None:
        from transformers import AutoModelForCausalLM, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.max_new_tokens = max_new_tokens

    def caption(self, data: bytes) -> str:
        return self.captions([data])[0]

    def captions(self, images: list[bytes]) -> list[str]:
        import torch

        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
        pixel_values = self.processor(images=pictures, return_tensors="pt").pixel_values
        with torch.inference_mode():
            ids = self.model.generate(
                pixel_values=pixel_values, do_sample=False, max_new_tokens=self.max_new_tokens
            )
        return [title.strip() for title in self.processor.batch_decode(ids, skip_special_tokens=True)]


@cache
def reference_captioner(model_dir: Path) -> ReferenceCaptioner:
    return ReferenceCaptioner(model_dir)
