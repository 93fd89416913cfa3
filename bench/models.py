"""Random-weight GIT model directories, built once and cached under .local/models (git-ignored)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from captioner.model_factory import ModelSize, make_model

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / ".local" / "models"
# make_model writes this file last, so its presence means the directory is complete.
_COMPLETE_MARKER = "CAPTIONER_RANDOM_WEIGHTS"


def ensure_model(size: ModelSize, root: Path = MODELS_DIR) -> Path:
    """The cached model directory of `size`, built first if missing (atomically, by rename)."""
    target = root / size
    if (target / _COMPLETE_MARKER).is_file():
        return target
    staging = root / f".{size}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    make_model(size, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
