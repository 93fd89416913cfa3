"""Caption-cache entries as a worker writes them, signed or forged, for the cache's tests."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.cache_keys import entry_key
from core.cache_signing import CacheSigner
from schemas import CACHE_ENTRY_CODEC, CaptionCacheEntry

MODEL = "models/tiny"
REVISION = "sha256-" + "ab" * 32

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def make_entry(image: bytes = b"picture", **fields: object) -> CaptionCacheEntry:
    """A valid entry of profile MODEL, REVISION, float32, pil, shared scope, limit 20."""
    entry = CaptionCacheEntry(
        image_sha256=hashlib.sha256(image).hexdigest(),
        model=MODEL,
        max_new_tokens=20,
        title="a red bus",
        worker_id="worker-7",
        correlation_id="c-1",
        attempt=2,
        inference_ms=123.456,
        completed_at=datetime(2024, 5, 1, tzinfo=UTC),
        revision=REVISION,
        precision="float32",
        image_pipeline="pil",
    )
    return replace(entry, **fields)  # type: ignore[arg-type]


def new_signer() -> CacheSigner:
    return CacheSigner(private_key=Ed25519PrivateKey.generate())


def signed(entry: CaptionCacheEntry, signer: CacheSigner) -> Record:
    """The record a worker with `signer` writes for `entry`: its key, value and signature headers."""
    key, value = entry_key(entry), CACHE_ENTRY_CODEC.encode(entry)
    return key, value, signer.headers(key, value)
