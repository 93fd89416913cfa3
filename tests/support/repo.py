"""The files inside the repository, less what installing and caching put there."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Made by `make install` / `make test` before any test runs, or by Python and the linters themselves.
NOT_WRITTEN_BY_TESTS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache"}
# Fetched by `make test` before the tests start (infra/kafka/broker.sh and infra/registry/registry.sh fetch).
FETCHED = {os.path.join(".local", "kafka", "libs"), os.path.join(".local", "registry")}


def repo_files() -> set[str]:
    found: set[str] = set()
    for directory, subdirectories, files in os.walk(REPO):
        subdirectories[:] = [name for name in subdirectories if _written_by_tests(directory, name)]
        found.update(os.path.relpath(os.path.join(directory, name), REPO) for name in files)
    return found


def _written_by_tests(directory: str, name: str) -> bool:
    if name in NOT_WRITTEN_BY_TESTS or name.endswith(".egg-info"):
        return False
    return os.path.relpath(os.path.join(directory, name), REPO) not in FETCHED
