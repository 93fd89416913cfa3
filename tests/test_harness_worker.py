"""The harness's worker model (tests/support/harness_worker.py) and the endless test model
(tests/support/models.py): what the benchmarks, drills and slow-job tests rely on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.settings import WorkerSettings
from inference_consumer.errors import InferenceError
from inference_consumer.model import CaptionModel, load_caption_model
from tests.support.harness_worker import HarnessModel, HarnessSettings
from tests.support.images import make_picture
from tests.support.models import endless_model


def pixels(model: CaptionModel, count: int) -> list[torch.Tensor]:
    return [model.preprocess(make_picture(seed=seed)) for seed in range(count)]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> CaptionModel:
    return load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu"))


def test_the_first_batches_fail_as_retriable_then_the_model_captions(tiny_model: CaptionModel) -> None:
    model = HarnessModel.around(tiny_model, HarnessSettings(failing_batches=2))
    images = pixels(model, 2)

    for _ in range(2):
        with pytest.raises(InferenceError) as failed:
            model.caption(images, max_new_tokens=[20, 20])
        assert failed.value.retriable

    assert model.caption(images, max_new_tokens=[20, 20]) == tiny_model.caption(
        images, max_new_tokens=[20, 20]
    )


def test_captions_are_forced_to_the_harness_length(tiny_model: CaptionModel) -> None:
    model = HarnessModel.around(tiny_model, HarnessSettings(min_new_tokens=12))
    images = pixels(model, 3)

    forced = model.caption(images, max_new_tokens=[12, 12, 12])

    assert forced == tiny_model.caption(images, max_new_tokens=[12, 12, 12], min_new_tokens=12)


def decoded(model_dir: Path, *, max_new_tokens: int) -> tuple[torch.Tensor, int]:
    """Token ids of four pictures, and the model's end-of-sequence id."""
    model = load_caption_model(WorkerSettings(model=str(model_dir), device="cpu"))
    with torch.inference_mode():
        tokens = model.decoder.generate(torch.stack(pixels(model, 4)), max_new_tokens=max_new_tokens)
    return tokens, int(model.model.generation_config.eos_token_id)


def test_the_endless_model_never_ends_a_caption_early(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A model that would end every caption at once (the end-of-sequence token always likeliest) ...
    eager = shutil.copytree(tiny_model_dir, tmp_path / "eager")
    weights = load_file(eager / "model.safetensors")
    eos = json.loads((eager / "generation_config.json").read_text())["eos_token_id"]
    weights["output.bias"][eos] = 1e4
    save_file(weights, eager / "model.safetensors", metadata={"format": "pt"})
    tokens, eos = decoded(eager, max_new_tokens=40)
    assert (tokens[:, 1] == eos).all()

    tokens, eos = decoded(endless_model(eager, tmp_path / "endless"), max_new_tokens=40)  # ... made endless

    assert tokens.shape == (4, 1 + 40)
    assert not (tokens == eos).any()
