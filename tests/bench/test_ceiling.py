"""The ceiling replays the model's own kernels: the same ops, shapes and dtype as a caption batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench.ceiling import kernel_time, record_kernels
from core.settings import WorkerSettings
from inference_consumer.model import load_caption_model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_kernels_are_the_models_own_in_its_dtype(tiny_model_dir: Path, dtype: str) -> None:
    model = load_caption_model(
        WorkerSettings(model=str(tiny_model_dir), device="cpu", dtype=dtype), cpu_flags={"amx_bf16"}
    )
    pixels = [torch.rand(3, model.image_edge, model.image_edge)] * 2

    calls = record_kernels(lambda: model.caption(pixels, max_new_tokens=[5, 5], min_new_tokens=5))

    ops = {str(func.overloadpacket) for func, _, _ in calls}
    assert {"aten.addmm", "aten.convolution"} <= ops
    dtypes = {
        meta[3]
        for _, args, _ in calls
        for meta in args[1]
        if meta[0] == "tensor" and meta[3].is_floating_point
    }
    assert dtypes == {getattr(torch, dtype)}
    timed = kernel_time(model, pixels, max_new_tokens=5, min_new_tokens=5)
    assert timed.dtype == dtype and timed.batch == 2 and timed.calls == sum(calls.values())
    assert 0 < timed.distinct < timed.calls and math.isfinite(timed.img_s) and timed.img_s > 0
