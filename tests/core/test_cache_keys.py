"""The caption cache's key: an image's hash, its token limit and its model, and nothing else."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import pytest

from core.cache_keys import cache_key, entry_key, entry_problem, image_sha256
from schemas import CaptionCacheEntry

SHA = hashlib.sha256(b"picture").hexdigest()


def make_entry(**fields: object) -> CaptionCacheEntry:
    defaults: dict[str, object] = {
        "image_sha256": SHA,
        "model": "models/tiny",
        "max_new_tokens": 20,
        "title": "a red bus",
        "worker_id": "worker-1",
        "correlation_id": "c-1",
    }
    return CaptionCacheEntry(**{**defaults, **fields})  # type: ignore[arg-type]


def test_the_image_hash_is_sha256_of_its_bytes() -> None:
    assert image_sha256(b"picture") == SHA


def test_the_key_holds_image_token_limit_and_model() -> None:
    key = cache_key(image_sha256=SHA, model="models/tiny", max_new_tokens=20)
    assert key == f"v1:{SHA}:20:models/tiny".encode()
    others = {
        cache_key(image_sha256=image_sha256(b"other"), model="models/tiny", max_new_tokens=20),
        cache_key(image_sha256=SHA, model="models/base", max_new_tokens=20),
        cache_key(image_sha256=SHA, model="models/tiny", max_new_tokens=5),
    }
    assert key not in others and len(others) == 3
    assert cache_key(image_sha256=SHA, model="models/tiny", max_new_tokens=20) == key


def test_an_entry_sits_under_the_key_of_its_own_fields() -> None:
    entry = make_entry(model="a:b:c")  # colons in a model name cannot move it under another key
    assert entry_key(entry) == cache_key(image_sha256=SHA, model="a:b:c", max_new_tokens=20)
    assert entry_key(entry) != entry_key(make_entry(model="a:b", max_new_tokens=20))


def test_a_worker_written_entry_has_no_problem() -> None:
    assert entry_problem(make_entry()) is None
    assert entry_problem(make_entry(title="")) is None  # a model may say nothing


@pytest.mark.parametrize(
    "fields",
    [
        {"image_sha256": "ab"},
        {"image_sha256": SHA.upper()},
        {"max_new_tokens": 0},
        {"max_new_tokens": 100_000},
        {"model": ""},
        {"title": "x" * 5000},
        {"worker_id": "w" * 5000},
        {"attempt": 0},
        {"inference_ms": -1.0},
        {"inference_ms": math.nan},
        {"inference_ms": math.inf},
    ],
)
def test_an_entry_no_worker_writes_has_a_problem(fields: dict[str, object]) -> None:
    assert entry_problem(replace(make_entry(), **fields)) is not None  # type: ignore[arg-type]
