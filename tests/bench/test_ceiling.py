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


def test_packed_linears_are_recorded_as_the_models_kernels(tiny_model_dir: Path) -> None:
    """CAPTIONER_PACKED_CPU_WEIGHTS runs the decoding steps' linears as oneDNN kernels: they are the
    model's kernels too, so the ceiling replays them (the same count of calls as the exact path)."""

    def kernels(packed: bool) -> tuple[set[str], int, bool]:
        settings = WorkerSettings(model=str(tiny_model_dir), device="cpu", packed_cpu_weights=packed)
        model = load_caption_model(settings)
        pixels = [torch.rand(3, model.image_edge, model.image_edge)] * 2
        calls = record_kernels(lambda: model.caption(pixels, max_new_tokens=[5, 5], min_new_tokens=5))
        timed = kernel_time(model, pixels, max_new_tokens=5, min_new_tokens=5)
        assert math.isfinite(timed.img_s) and timed.img_s > 0
        ops = {str(func.overloadpacket) for func, _, _ in calls}
        return ops, sum(calls.values()), bool(getattr(model.decoder, "packed_cpu_weights", False))

    exact_ops, exact_calls, _ = kernels(packed=False)
    packed_ops, packed_calls, packed = kernels(packed=True)

    # Without oneDNN the decoder keeps the exact path (inference_consumer/decoding.py) and so does this.
    assert packed_ops - exact_ops == ({"mkldnn._linear_pointwise"} if packed else set())
    assert packed_calls == exact_calls
