"""The caption cache's key and the bounds of its records (README, "Caption cache").

A title depends on the image, the model and the token limit, so the key holds all three: the SHA-256 of
the image's bytes, the limit the worker applied and the model's id. Workers write entries under this key;
API instances look titles up by it and check that every entry they read sits under its own key.
"""

from __future__ import annotations

import hashlib
import re

from schemas import CaptionCacheEntry

KEY_VERSION = "v1"
# Entries hold a short title and a few names: 16 KiB is far above a real one (a few hundred bytes) and
# bounds what a record on the topic, hostile or not, can cost a reader.
MAX_ENTRY_BYTES = 16 * 1024
MAX_TEXT_CHARS = 2048
MAX_NEW_TOKENS_LIMIT = 512
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def image_sha256(data: bytes) -> str:
    """Blocking for large images (hashlib releases the GIL): call it off the event loop."""
    return hashlib.sha256(data).hexdigest()


def cache_key(*, image_sha256: str, model: str, max_new_tokens: int) -> bytes:
    """`v1:<sha256 hex>:<max_new_tokens>:<model>`, UTF-8: readable in a console consumer, and the model
    last, so whatever characters it holds, the key reads back unambiguously."""
    return f"{KEY_VERSION}:{image_sha256}:{max_new_tokens}:{model}".encode()


def entry_key(entry: CaptionCacheEntry) -> bytes:
    return cache_key(image_sha256=entry.image_sha256, model=entry.model, max_new_tokens=entry.max_new_tokens)


def entry_problem(entry: CaptionCacheEntry) -> str | None:
    """Why an entry read from the topic is not one a worker could have written; None when it is."""
    if _SHA256_HEX.fullmatch(entry.image_sha256) is None:
        return "image_sha256 is not 64 lowercase hex digits"
    if not 1 <= entry.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        return "max_new_tokens out of range"
    if not entry.model:
        return "model is empty"
    if any(
        len(text) > MAX_TEXT_CHARS
        for text in (entry.model, entry.title, entry.worker_id, entry.correlation_id)
    ):
        return "a text field is too long"
    if not 1 <= entry.attempt <= 1000:
        return "attempt out of range"
    if not 0.0 <= entry.inference_ms < 86_400_000.0:  # NaN fails both comparisons
        return "inference_ms out of range"
    return None


def entry_size(key: bytes, entry: CaptionCacheEntry) -> int:
    """What an entry costs in memory, roughly: its strings plus a fixed share for the objects around them."""
    texts = (entry.image_sha256, entry.model, entry.title, entry.worker_id, entry.correlation_id)
    return len(key) + sum(len(text) for text in texts) + 400
