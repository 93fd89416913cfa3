"""The model's public name, which replies, API answers and caption-cache keys share: never a server path."""

from __future__ import annotations

from pathlib import Path


def public_model_id(model: str, model_id: str | None = None) -> str:
    """`model_id` when set; else a hub id as given, a hub-cache snapshot's repository id, or a
    directory's own name."""
    if model_id:
        return model_id
    path = Path(model)
    if not path.is_dir():
        return model  # a hub id
    path = path.resolve()
    repo = path.parent.parent.name  # the hub cache's layout: models--<owner>--<name>/snapshots/<revision>
    if path.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return path.name
