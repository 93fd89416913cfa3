"""The naive baseline: what a plain script does, in-process, one image at a time.

JPEG bytes -> PIL (full decode) -> the GIT processor -> Hugging Face `generate` (greedy) -> decode,
with min_new_tokens = max_new_tokens so every caption costs the same fixed work.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.images import BenchImage


@dataclass(frozen=True)
class NaiveResult:
    images: int
    seconds: float
    words_per_title: float  # a check that generation was forced to its full length

    @property
    def img_s(self) -> float:
        return self.images / self.seconds


def run_naive(
    model_dir: Path, images: list[BenchImage], *, max_new_tokens: int, min_new_tokens: int, budget_s: float
) -> NaiveResult:
    """Caption each image once, in order, until done or past budget_s (after at least 3 images)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    torch.set_num_threads(os.cpu_count() or 1)
    processor: Any = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    caption = _captioner(processor, model, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
    caption(images[0].data)  # warm-up: first-call allocations and kernel selection, not timed
    words, started = 0, time.perf_counter()
    for done, image in enumerate(images, start=1):
        words += len(caption(image.data).split())
        elapsed = time.perf_counter() - started
        if elapsed > budget_s and done >= min(3, len(images)):
            break
    return NaiveResult(images=done, seconds=elapsed, words_per_title=words / done)


def _captioner(
    processor: Any, model: Any, *, max_new_tokens: int, min_new_tokens: int
) -> Callable[[bytes], str]:
    import torch
    from PIL import Image

    def caption(data: bytes) -> str:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        pixel_values = processor(images=image, return_tensors="pt").pixel_values
        with torch.inference_mode():
            token_ids = model.generate(
                pixel_values=pixel_values,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
            )
        return str(processor.batch_decode(token_ids, skip_special_tokens=True)[0]).strip()

    return caption
