"""The caption cache's keys and the bounds of its records (docs/caption-cache.md).

A title depends on the image, the token limit and the model profile that computed it: the model's id,
its revision, its precision and the image pipeline. The topic key holds all of them, and the scope the
title is filed under, so entries from different profiles or scopes never replace each other:

    v2:<scope>:<image sha256>:<max_new_tokens>:<precision>:<image pipeline>:<revision>:<model>

Every part but the model is from a fixed alphabet without colons, and the model comes last, so the key
reads back unambiguously whatever characters the model's id holds. API instances look titles up by the
parts they know exactly from their own settings (`lookup_key`: scope, image, limit, model) and check
the rest (revision, precision, pipeline) as they read each entry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from schemas import CaptionCacheEntry

KEY_VERSION = "v2"
SHARED_SCOPE = "shared"
# Entries hold a short title and a few names: 16 KiB is far above a real one (a few hundred bytes) and
# bounds what a record on the topic, hostile or not, can cost a reader.
MAX_ENTRY_BYTES = 16 * 1024
MAX_TEXT_CHARS = 2048
MAX_NEW_TOKENS_LIMIT = 512
MAX_REVISION_CHARS = 128
DTYPES = ("float32", "float16", "bfloat16")
IMAGE_PIPELINES = ("pil", "tensor")
QUANTIZED_SUFFIX = "+int8"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A scope is a hash of an API key: fixed length, lowercase hex; anything else is no scope.
SCOPE_HEX = re.compile(r"[0-9a-f]{32}")
# Hub commits, branch and tag names, sha256-<hex>: no colon, so the key stays unambiguous.
REVISION = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._/+-]{{0,{MAX_REVISION_CHARS - 1}}}")
_PRECISION = re.compile(f"({'|'.join(DTYPES)})({re.escape(QUANTIZED_SUFFIX)})?")
_SCOPE_DOMAIN = b"captioner.cache-scope.v1\x00"


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What a worker's titles depend on besides the image and the token limit, as the worker resolved it."""

    model: str  # the public id (core.model_id)
    revision: str
    precision: str  # precision_name()
    image_pipeline: str  # pil or tensor


def precision_name(dtype: str, quantize: str) -> str:
    """`float32`, `float16`, `bfloat16`, with `+int8` for int8 weight-only quantization."""
    return dtype + (QUANTIZED_SUFFIX if quantize == "int8" else "")


def image_sha256(data: bytes) -> str:
    """Blocking for large images (hashlib releases the GIL): call it off the event loop."""
    return hashlib.sha256(data).hexdigest()


def api_key_scope(api_key: str) -> str:
    """The scope of one API key's callers: a one-way, domain-separated hash of the key, never the key."""
    digest = hashlib.sha256(_SCOPE_DOMAIN + api_key.encode("utf-8", "surrogateescape")).hexdigest()
    return digest[:32]


def valid_scope(scope: str) -> bool:
    return scope == SHARED_SCOPE or SCOPE_HEX.fullmatch(scope) is not None


def lookup_key(*, scope: str, image_sha256: str, max_new_tokens: int, model: str) -> bytes:
    """What an API instance looks a title up by: the parts of the key its own settings fix exactly."""
    return f"{scope}:{image_sha256}:{max_new_tokens}:{model}".encode()


def entry_key(entry: CaptionCacheEntry) -> bytes:
    """The topic key an entry must sit under."""
    parts = (
        KEY_VERSION,
        entry.scope,
        entry.image_sha256,
        str(entry.max_new_tokens),
        entry.precision,
        entry.image_pipeline,
        entry.revision,
        entry.model,
    )
    return ":".join(parts).encode()


def entry_lookup_key(entry: CaptionCacheEntry) -> bytes:
    return lookup_key(
        scope=entry.scope,
        image_sha256=entry.image_sha256,
        max_new_tokens=entry.max_new_tokens,
        model=entry.model,
    )


def lookup_key_of(key: bytes) -> bytes | None:
    """The look-up key inside a topic key (for a tombstone, which has no entry); None when the key is not
    a v2 key."""
    parts = key.split(b":", 7)
    if len(parts) != 8 or parts[0] != KEY_VERSION.encode():
        return None
    _version, scope, sha, tokens, _precision, _pipeline, _revision, model = parts
    return b":".join((scope, sha, tokens, model))


def entry_problem(entry: CaptionCacheEntry) -> str | None:
    """Why an entry read from the topic is not one a worker could have written; None when it is."""
    if _SHA256_HEX.fullmatch(entry.image_sha256) is None:
        return "image_sha256 is not 64 lowercase hex digits"
    if not 1 <= entry.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        return "max_new_tokens out of range"
    if not entry.model:
        return "model is empty"
    if not valid_scope(entry.scope):
        return "scope is neither shared nor 32 hex digits"
    if _PRECISION.fullmatch(entry.precision) is None:
        return "precision is not a known one"
    if entry.image_pipeline not in IMAGE_PIPELINES:
        return "image_pipeline is not a known one"
    if REVISION.fullmatch(entry.revision) is None:
        return "revision is malformed"
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
    texts = (
        entry.image_sha256,
        entry.model,
        entry.title,
        entry.worker_id,
        entry.correlation_id,
        entry.revision,
        entry.precision,
        entry.image_pipeline,
        entry.scope,
    )
    return len(key) + sum(len(text) for text in texts) + 400
