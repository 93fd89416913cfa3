"""Writes each caption to the compacted caption-cache topic, signed (docs/caption-cache.md).

Best effort, and out of the job's way: an entry is handed over only once the job's SUCCEEDED reply counts
as written (acknowledged; exactly once: staged in the worker's transaction), a thread of its own hashes the
image, signs and hands the entry to the worker's sink (delivery.py), and whatever goes wrong (a full
queue, a refusal, a broker down) costs only that entry, counted in a metric, never the job.
A worker without a signing key writes nothing: API instances would skip its entries.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import KafkaError

from core.cache_keys import MAX_ENTRY_BYTES, ModelProfile, entry_key, image_sha256
from core.cache_signing import CacheSigner, load_signer
from core.settings import CacheSettings
from inference_consumer import metrics
from inference_consumer.delivery import OutcomeRecord, OutcomeSink
from schemas import CACHE_ENTRY_CODEC, CaptionCacheEntry

log = logging.getLogger(__name__)

# Images wait here, unhashed, while the thread catches up: bounded in bytes as well as in number.
MAX_PENDING = 256
MAX_PENDING_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Captioned:
    """One job's caption, as its reply gave it, and the bytes of the image it was computed from."""

    image: bytes
    scope: str  # shared, or a caller's scope (core.cache_keys.valid_scope)
    max_new_tokens: int
    title: str
    worker_id: str
    correlation_id: str
    attempt: int
    inference_ms: float
    completed_at: datetime


def load_cache_signer(settings: CacheSettings | None) -> CacheSigner | None:
    """The key this worker signs entries with; None, with one log line saying why, when it writes none.
    A key file that is set but unusable raises CacheKeyError: the worker does not start."""
    if settings is None or not settings.enabled:
        return None
    if settings.signing_key_file is None:
        log.warning(
            "caption cache: this worker writes no entries, CAPTIONER_CACHE_SIGNING_KEY_FILE is not set "
            "(`captioner cache keygen` makes a key pair; docs/caption-cache.md)"
        )
        return None
    return load_signer(settings.signing_key_file)


class CacheWriter:
    def __init__(
        self,
        *,
        sink: OutcomeSink,
        topic: str,
        signer: CacheSigner,
        profile: ModelProfile,
        encode: Callable[[CaptionCacheEntry], bytes] = CACHE_ENTRY_CODEC.encode,
    ) -> None:
        """encode: the entry's framing (single-object, or the registry's when one is configured)."""
        self._sink = sink
        self._encode = encode
        self._topic = topic
        self._signer = signer
        self._profile = profile
        self._queue: queue.Queue[Captioned | None] = queue.Queue(maxsize=MAX_PENDING)
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, captioned: Captioned) -> None:
        """Never blocks: safe in a delivery callback. A full queue drops the entry."""
        size = len(captioned.image)
        with self._lock:
            if self._pending_bytes + size > MAX_PENDING_BYTES:
                metrics.CACHE_WRITES.labels(result="dropped").inc()
                return
            self._pending_bytes += size
        try:
            self._queue.put_nowait(captioned)
        except queue.Full:
            self._release(size)
            metrics.CACHE_WRITES.labels(result="dropped").inc()

    def close(self, timeout_s: float) -> None:
        """Writes what is queued (within timeout_s), then stops; the producer's flush (exactly once: the
        last commit) delivers it."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (captioned := self._queue.get()) is not None:
            try:
                self._write(captioned)
            except Exception:  # one entry must never stop the thread
                log.exception("caption-cache entry for %s not written", captioned.correlation_id)
                metrics.CACHE_WRITES.labels(result="failed").inc()
            finally:
                self._release(len(captioned.image))

    def _release(self, size: int) -> None:
        with self._lock:
            self._pending_bytes -= size

    def _write(self, captioned: Captioned) -> None:
        profile = self._profile
        entry = CaptionCacheEntry(
            image_sha256=image_sha256(captioned.image),
            model=profile.model,
            revision=profile.revision,
            precision=profile.precision,
            image_pipeline=profile.image_pipeline,
            scope=captioned.scope,
            max_new_tokens=captioned.max_new_tokens,
            title=captioned.title,
            worker_id=captioned.worker_id,
            correlation_id=captioned.correlation_id,
            attempt=captioned.attempt,
            inference_ms=captioned.inference_ms,
            completed_at=captioned.completed_at,
        )
        value = self._encode(entry)
        if len(value) > MAX_ENTRY_BYTES:  # readers would skip it
            metrics.CACHE_WRITES.labels(result="failed").inc()
            return
        key = entry_key(entry)
        headers: list[tuple[str, str | bytes | None]] = [*self._signer.headers(key, value)]
        self._sink.emit(
            OutcomeRecord(
                topic=self._topic,
                key=key,
                value=value,
                headers=headers,
                acknowledged=_written,
                failed=functools.partial(_not_written, self._topic),
                wait_when_full=False,
            )
        )


def _written() -> None:
    metrics.CACHE_WRITES.labels(result="written").inc()


def _not_written(topic: str, error: KafkaError) -> None:
    if error.code() == KafkaError._QUEUE_FULL:
        metrics.CACHE_WRITES.labels(result="dropped").inc()
        return
    log.warning("caption-cache entry not written to %s: %s", topic, error.str())
    metrics.CACHE_WRITES.labels(result="failed").inc()
