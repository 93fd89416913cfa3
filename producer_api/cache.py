"""The API's side of the caption cache (README, "Caption cache").

Workers write each title to a compacted topic, keyed by image hash, model and token limit
(core/cache_keys.py). Every API instance reads that topic from its beginning at start, with assign()
and no consumer group, into a bounded in-memory LRU, and keeps following it; the request path looks an
image up there before publishing a job. Anyone who may write the topic could write anything to it, so
each record is checked before it is kept: a bounded size, a valid entry, and the key that entry must
have. A record that fails is counted and skipped; nothing it holds can stop the reader.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from core.cache_keys import MAX_ENTRY_BYTES, cache_key, entry_key, entry_problem, entry_size
from core.consuming import poll_batch
from core.kafka_config import consumer_config
from core.model_id import public_model_id
from core.settings import ApiSettings, CacheSettings, KafkaSettings, TopicSettings
from producer_api import metrics
from schemas import CACHE_ENTRY_CODEC, CaptionCacheEntry, RecordDecodeError

log = logging.getLogger(__name__)

BYPASS_HEADER = "X-Captioner-Cache"
# A key is `v1:<64 hex>:<tokens>:<model>`; models are names or paths, well under this.
MAX_KEY_BYTES = 4096
# How long start-up waits for the topic to be read to the end it had; past this the API serves anyway
# (misses until the reader catches up).
LOAD_WAIT_S = 10.0


class CaptionLru:
    """Entries by key, least recently used first out, within a count and an estimated byte bound.
    Thread-safe: the reader thread writes, the event loop reads (each call is a few dict operations)."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: collections.OrderedDict[bytes, tuple[CaptionCacheEntry, int]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: bytes) -> CaptionCacheEntry | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: bytes, entry: CaptionCacheEntry) -> None:
        size = entry_size(key, entry)
        with self._lock:
            self._drop(key)
            if size > self._max_bytes:
                return
            self._entries[key] = (entry, size)
            self._bytes += size
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                _key, (_entry, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def remove(self, key: bytes) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= found[1]


class CachedCaptions:
    """What the request path asks: the title of an image under this instance's model and token limit."""

    def __init__(self, *, lru: CaptionLru, settings: CacheSettings) -> None:
        self._lru = lru
        self._model = public_model_id(settings.model, settings.model_id)  # as the workers name it
        self._max_new_tokens = settings.max_new_tokens

    def find(self, image_sha256: str) -> CaptionCacheEntry | None:
        key = cache_key(image_sha256=image_sha256, model=self._model, max_new_tokens=self._max_new_tokens)
        entry = self._lru.get(key)
        (metrics.CACHE_MISSES if entry is None else metrics.CACHE_HITS).inc()
        return entry


def cache_bypassed(headers: Mapping[str, str]) -> bool:
    """`Cache-Control: no-cache` (or `max-age=0`) or `X-Captioner-Cache: bypass`: caption afresh."""
    if headers.get(BYPASS_HEADER, "").strip().lower() == "bypass":
        return True
    getall = getattr(headers, "getall", None)
    values: list[str] = getall("Cache-Control", []) if getall else [headers.get("Cache-Control", "")]
    for value in values:
        for directive in value.lower().split(","):
            name, _, argument = directive.strip().partition("=")
            if name == "no-cache" or (name == "max-age" and argument.strip().strip('"') == "0"):
                return True
    return False


def reader_config(config: dict[str, Any]) -> dict[str, Any]:
    """Reads from the beginning, commits nothing, and reports each partition's end as it reaches it."""
    return config | {
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }


class CacheReader:
    """A thread that reads every partition of the cache topic from its start into the LRU, then follows."""

    def __init__(self, *, config: dict[str, Any], topic: str, lru: CaptionLru) -> None:
        self.topic = topic
        self._lru = lru
        self._consumer = Consumer(reader_config(config))
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-reader", daemon=True)
        self._behind: dict[int, int] = {}  # partition -> the end offset it had at start, until reached
        self.loaded = threading.Event()

    def start(self, *, timeout_s: float) -> None:
        metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise RuntimeError(f"the caption-cache topic {self.topic} is not available")
        partitions = sorted(topic.partitions)
        for partition in partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=timeout_s
            )
            if high > low:
                self._behind[partition] = high
        if not self._behind:
            self.loaded.set()
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._thread.start()

    def close(self, *, timeout_s: float) -> None:
        self._stopping.set()
        self._thread.join(timeout_s)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                for message in poll_batch(self._consumer, max_messages=1000, timeout_s=0.1):
                    self._handle(message)
            except Exception:  # the reader outlives whatever one poll or record brings
                log.exception("caption-cache reader error")
                metrics.CACHE_READER_ERRORS.labels(reason="unexpected").inc()
                time.sleep(0.1)
            metrics.CACHE_ENTRIES.set(len(self._lru))
            metrics.CACHE_BYTES.set(self._lru.size_bytes)

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._reached(message.partition(), message.offset())
            else:
                log.warning("caption-cache topic error: %s", error)
                metrics.CACHE_READER_ERRORS.labels(reason="read_error").inc()
            return
        try:
            apply_record(self._lru, message.key(), message.value())
        except Exception:
            log.exception("caption-cache record %s@%s skipped", message.partition(), message.offset())
            metrics.CACHE_READER_ERRORS.labels(reason="unexpected").inc()
        offset = message.offset()
        self._reached(message.partition(), None if offset is None else offset + 1)

    def _reached(self, partition: int | None, next_offset: int | None) -> None:
        if partition is None or next_offset is None:
            return
        end = self._behind.get(partition)
        if end is not None and next_offset >= end:
            del self._behind[partition]
            if not self._behind:
                self.loaded.set()


def apply_record(lru: CaptionLru, key: bytes | None, value: bytes | None) -> None:
    """One record of the topic: an entry to keep, a tombstone (no value) that forgets its key, or a record
    to skip and count."""
    problem = _keep(lru, key, value)
    if problem is not None:
        log.warning("caption-cache record skipped: %s", problem)
        metrics.CACHE_READER_ERRORS.labels(reason=problem.split(":")[0]).inc()


def _keep(lru: CaptionLru, key: bytes | None, value: bytes | None) -> str | None:
    """None once the record is applied; else why it was not (a reason, then a colon and details)."""
    if not key or len(key) > MAX_KEY_BYTES:
        return "bad_key"
    if value is None:
        lru.remove(key)
        return None
    if len(value) > MAX_ENTRY_BYTES:
        return "too_large"
    try:
        entry = CACHE_ENTRY_CODEC.decode(value)
    except RecordDecodeError as exc:
        return f"undecodable: {exc.message}"
    problem = entry_problem(entry)
    if problem is not None:
        return f"invalid: {problem}"
    if entry_key(entry) != key:
        return "key_mismatch"
    lru.put(key, entry)
    return None


@dataclass(frozen=True)
class CacheRuntime:
    captions: CachedCaptions
    reader: CacheReader


async def start_caption_cache(
    cache: CacheSettings,
    *,
    api: ApiSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    client: dict[str, Any] | None = None,
) -> CacheRuntime | None:
    """The LRU and its reader, started and given LOAD_WAIT_S to read the topic; None when disabled.
    `client`: more librdkafka configuration for the reader (its log and error callbacks)."""
    if not cache.enabled:
        return None
    lru = CaptionLru(max_entries=api.cache_max_entries, max_bytes=api.cache_max_bytes)
    client_id = f"captioner-api-{api.instance_id}-cache"
    reader = CacheReader(
        config=consumer_config(kafka, topics, client_id=client_id, group_id=client_id) | (client or {}),
        topic=topics.captions,
        lru=lru,
    )
    await asyncio.to_thread(reader.start, timeout_s=30.0)
    started = time.monotonic()
    if await asyncio.to_thread(reader.loaded.wait, LOAD_WAIT_S):
        log.info(
            "caption cache: %d entries read from %s in %.1f s",
            len(lru),
            topics.captions,
            time.monotonic() - started,
        )
    else:
        log.warning(
            "caption cache: %s not read to its end within %g s; serving", topics.captions, LOAD_WAIT_S
        )
    return CacheRuntime(captions=CachedCaptions(lru=lru, settings=cache), reader=reader)
