"""Agreement of the tensor image pipeline (inference_consumer.image_pipeline) with the PIL path.

    python -m bench.gpu --agreement [--device cuda] [--size base] [--images 256]

On a mix of generated images (JPEG baseline, progressive, greyscale and EXIF-rotated, PNG, WEBP; 24 to
`max_edge` pixels a side, aspect ratios up to 4:1 both ways), each image goes through the PIL path
(`CaptionModel.pixels`, on the CPU) and through `ImagePipeline.prepare_batch` on the model's device, in
batches. Reported: the largest absolute difference of the model's input (normalised units: one step of
8-bit pixel value is ~0.015), how many images have bit-identical input, how many titles are identical,
and whether the fast decoder gives `generate`'s token ids on the tensor pipeline's pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import torch

    from inference_consumer.model import CaptionModel

BATCH = 32


@dataclass(frozen=True)
class Agreement:
    images: int
    device: str
    max_pixel_diff: float
    identical_pixels: int
    identical_titles: int
    decoder_identical: bool

    def describe(self) -> str:
        return (
            f"tensor pipeline ({self.device}) vs PIL path on {self.images} images: largest pixel difference "
            f"{self.max_pixel_diff:.4f} (normalised), identical input {self.identical_pixels}/{self.images}, "
            f"identical titles {self.identical_titles}/{self.images}, fast decoder == generate on the "
            f"tensor pixels: {self.decoder_identical}"
        )


def agreement_images(count: int, *, max_edge: int = 1600, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [_encode(rng, index, _picture(rng, max_edge)) for index in range(count)]


def _picture(rng: np.random.Generator, max_edge: int) -> Image.Image:
    long_side = int(rng.integers(24, max_edge + 1))
    ratio = float(rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 3.0, 4.0]))
    short_side = max(8, round(long_side / ratio))
    width, height = (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    base = base * rng.uniform(0.3, 1.0, size=3) + rng.normal(0, 12, size=(height, width, 1))
    picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(2, width // 2 + 3)), y0 + int(rng.integers(2, height // 2 + 3))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
    return picture


def _encode(rng: np.random.Generator, index: int, picture: Image.Image) -> bytes:
    """Mostly JPEGs of every kind the device decoder takes; a PNG and a WEBP in every ten."""
    buffer = io.BytesIO()
    kind = index % 10
    if kind == 8:
        picture.save(buffer, format="PNG")
    elif kind == 9:
        picture.save(buffer, format="WEBP", quality=90)
    else:
        options: dict[str, object] = {"quality": int(rng.integers(60, 96))}
        if kind in (1, 5):
            options["progressive"] = True
        if kind == 2:
            picture = picture.convert("L")
        if kind in (3, 6):
            exif = Image.Exif()
            exif[0x0112] = int(rng.integers(2, 9))
            options["exif"] = exif
        picture.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def measure_agreement(model: CaptionModel, images: list[bytes], *, max_new_tokens: int = 20) -> Agreement:
    """Both paths on every image; titles from the service's decoder on each path's pixels."""
    import torch

    from inference_consumer.image_pipeline import ImagePipeline

    pipeline = ImagePipeline(model.processor.image_processor, device=model.device, max_pixels=10**9)
    max_diff, same_pixels, same_titles, decoder_identical = 0.0, 0, 0, True
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        reference = torch.stack([model.pixels(data, max_pixels=10**9) for data in chunk])
        batch = pipeline.prepare_batch(chunk)
        assert not any(batch.errors), batch.errors
        tensor = batch.pixels.cpu()
        diffs = (tensor - reference).abs().flatten(1).amax(dim=1)
        max_diff = max(max_diff, float(diffs.max()))
        same_pixels += int((diffs == 0).sum())
        limits = [max_new_tokens] * len(chunk)
        expected = model.caption(list(reference), max_new_tokens=limits)
        actual = model.caption(list(batch.pixels), max_new_tokens=limits)
        same_titles += sum(a == b for a, b in zip(actual, expected, strict=True))
        decoder_identical &= decoders_agree_on(model, batch.pixels, max_new_tokens=max_new_tokens)
    return Agreement(
        images=len(images),
        device=str(model.device),
        max_pixel_diff=round(max_diff, 4),
        identical_pixels=same_pixels,
        identical_titles=same_titles,
        decoder_identical=decoder_identical,
    )


def decoders_agree_on(model: CaptionModel, pixels: torch.Tensor, *, max_new_tokens: int) -> bool:
    """The fast decoder's token ids equal HF `generate`'s on these pixels, free and forced length."""
    import torch

    from inference_consumer.decoding import build_decoder

    batch = pixels.to(device=model.device, dtype=model.dtype)
    reference, fast = build_decoder("hf", model.model), build_decoder("fast", model.model)
    with torch.inference_mode():
        for minimum in (0, max_new_tokens):
            expected = reference.generate(batch, max_new_tokens=max_new_tokens, min_new_tokens=minimum)
            actual = fast.generate(batch, max_new_tokens=max_new_tokens, min_new_tokens=minimum)
            if expected.shape != actual.shape or not torch.equal(expected, actual):
                return False
    return True
