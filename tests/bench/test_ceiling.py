"""The ceiling replays the model's own kernels: the same ops, shapes and dtype as a caption batch."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from bench.ceiling import KernelReplay, kernel_time, record_kernels, record_kernels_by_stage
from core.settings import WorkerSettings
from inference_consumer.model import load_caption_model
from inference_consumer.stages import StageSink


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


def test_each_kernel_is_counted_under_the_stage_that_ran_it(tiny_model_dir: Path) -> None:
    """The model tells each stage as it ends: the patch convolution is the image encoder's, the prefill's
    products run on every image token, the decoding steps' on one token a row."""
    model = load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu"))
    pixels = [torch.rand(3, model.image_edge, model.image_edge)] * 2

    def caption(on_stage: StageSink | None = None) -> None:
        model.caption(pixels, max_new_tokens=[5, 5], min_new_tokens=5, on_stage=on_stage)

    by_stage = record_kernels_by_stage(caption)
    everything = record_kernels(caption)

    assert set(by_stage) == {"image_encoder", "prefill", "decoding_steps"}
    assert sum(by_stage.values(), Counter()) == everything

    def ops(stage: str) -> set[str]:
        return {str(func.overloadpacket) for func, _, _ in by_stage[stage]}

    def rows(stage: str) -> set[int]:  # the rows of each addmm's input: (bias, input, weight)
        addmms = [args for func, args, _ in by_stage[stage] if str(func.overloadpacket) == "aten.addmm"]
        return {args[1][1][1][0] for args in addmms}

    assert "aten.convolution" in ops("image_encoder")
    assert "aten.convolution" not in ops("prefill") | ops("decoding_steps")
    assert min(rows("prefill")) > 2  # every image token and BOS of both rows, layer by layer
    assert rows("decoding_steps") == {2}  # the newest token of each row

    timed = kernel_time(model, pixels, max_new_tokens=5, min_new_tokens=5)
    assert set(timed.stage_seconds) == set(by_stage)
    assert sum(timed.stage_seconds.values()) == pytest.approx(timed.seconds)


def test_a_replay_keeps_each_calls_best_over_its_rounds(tiny_model_dir: Path) -> None:
    """Rounds can alternate with runs of the batch (bench.inprocess.measure_in_process): each round times
    every distinct call once more, and a stage's kernel time only falls as rounds are added."""
    model = load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu"))
    pixels = [torch.rand(3, model.image_edge, model.image_edge)] * 2
    by_stage = record_kernels_by_stage(
        lambda on_stage: model.caption(pixels, max_new_tokens=[5, 5], min_new_tokens=5, on_stage=on_stage)
    )
    replay = KernelReplay(by_stage)
    assert all(math.isinf(seconds) for seconds in replay.stage_seconds().values())

    after = []
    for _ in range(3):
        replay.round()
        after.append(replay.stage_seconds())

    assert set(after[0]) == set(by_stage)
    for earlier, later in itertools.pairwise(after):
        assert all(0 < later[stage] <= earlier[stage] for stage in by_stage)
    timed = replay.kernel_time(dtype="float32", batch=2)
    assert timed.calls == sum(sum(calls.values()) for calls in by_stage.values())
    assert timed.distinct == len(set().union(*by_stage.values()))
    assert timed.seconds == pytest.approx(sum(after[-1].values()))
