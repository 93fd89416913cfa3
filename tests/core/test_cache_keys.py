"""The caption cache's keys: scope, image, token limit and the whole model profile, and nothing else."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import pytest

from core.cache_keys import (
    SHARED_SCOPE,
    api_key_scope,
    entry_key,
    entry_lookup_key,
    entry_problem,
    image_sha256,
    lookup_key,
    lookup_key_of,
    precision_name,
    valid_scope,
)
from tests.support.cache_entries import MODEL, REVISION, make_entry

SHA = hashlib.sha256(b"picture").hexdigest()


def test_the_image_hash_is_sha256_of_its_bytes() -> None:
    assert image_sha256(b"picture") == SHA


def test_the_key_holds_scope_image_limit_and_the_whole_profile() -> None:
    entry = make_entry()
    assert entry_key(entry) == f"v2:shared:{SHA}:20:float32:pil:{REVISION}:{MODEL}".encode()
    others = [
        make_entry(b"other"),
        make_entry(scope="0" * 32),
        make_entry(max_new_tokens=5),
        make_entry(precision="float16"),
        make_entry(precision="float32+int8"),
        make_entry(image_pipeline="tensor"),
        make_entry(revision="0123abc"),
        make_entry(model="models/base"),
    ]
    keys = {entry_key(other) for other in others}
    assert entry_key(entry) not in keys and len(keys) == len(others)  # no two profiles share a key


def test_an_api_instance_looks_up_by_what_its_settings_fix() -> None:
    entry = make_entry(model="a:b:c")  # colons in a model's id cannot move it under another key
    expected = lookup_key(scope=SHARED_SCOPE, image_sha256=SHA, max_new_tokens=20, model="a:b:c")
    assert entry_lookup_key(entry) == expected == lookup_key_of(entry_key(entry))
    # Profiles an API accepts alike (its dtype left at auto, say) share the look-up key.
    assert entry_lookup_key(replace(entry, precision="float16")) == expected
    assert lookup_key_of(f"v1:{SHA}:20:{MODEL}".encode()) is None
    assert lookup_key_of(b"v2:too:few") is None


def test_an_api_keys_scope_is_a_fixed_length_one_way_hash() -> None:
    scope = api_key_scope("key-a")
    assert valid_scope(scope) and len(scope) == 32 and "key-a" not in scope
    assert scope == api_key_scope("key-a") != api_key_scope("key-b")
    assert scope != hashlib.sha256(b"key-a").hexdigest()[:32]  # domain-separated: not the key's plain hash
    assert valid_scope(SHARED_SCOPE) and not valid_scope("A" * 32) and not valid_scope("0" * 31)


def test_precision_names_dtype_and_quantization() -> None:
    assert precision_name("float16", "none") == "float16"
    assert precision_name("float32", "int8") == "float32+int8"


def test_a_worker_written_entry_has_no_problem() -> None:
    assert entry_problem(make_entry()) is None
    assert entry_problem(make_entry(title="")) is None  # a model may say nothing
    assert entry_problem(make_entry(scope=api_key_scope("k"), precision="bfloat16+int8")) is None


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
        {"scope": ""},
        {"scope": "0" * 64},
        {"precision": ""},
        {"precision": "float64"},
        {"image_pipeline": "gpu"},
        {"revision": ""},
        {"revision": "a:b"},  # a colon would make keys ambiguous
        {"revision": "r" * 200},
    ],
)
def test_an_entry_no_worker_writes_has_a_problem(fields: dict[str, object]) -> None:
    assert entry_problem(make_entry(**fields)) is not None
