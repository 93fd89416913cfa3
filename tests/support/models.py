"""Model directories the tests make from the tiny one (captioner.model_factory)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

# Far below any logit of the tiny model's random weights: the token never wins a greedy step.
NEVER = -1e4


def endless_model(source: Path, out: Path) -> Path:
    """A copy of `source` that never ends a caption early: its vocabulary head's bias keeps the
    end-of-sequence token from being the likeliest, so every caption has max_new_tokens tokens and each
    batch costs fixed work (slow jobs for the tests that must find one running)."""
    shutil.copytree(source, out)
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    weights_path = out / "model.safetensors"
    weights = load_file(weights_path)
    weights["output.bias"][eos] = NEVER
    save_file(weights, weights_path, metadata={"format": "pt"})
    return out
