"""The API's side of the caption cache (docs/caption-cache.md).

Workers write each title to a compacted topic, signed, keyed by scope, image hash, token limit and model
profile (core/cache_keys.py). Every API instance reads the newest part of that topic at start (as much
as its LRU holds), with assign() and no consumer group, into a bounded in-memory LRU, and keeps
following it; the request path looks an image up there, in its caller's scope, before publishing a job.
Anyone who may write the topic could write anything to it, so each record is checked before it is kept:
a bounded size, a signature from a key this instance trusts over exactly its key and value, a valid
entry, and the key that entry must have. A record that fails is counted and skipped; nothing it holds
can stop the reader. Well-signed entries of another profile or scope are left out, and counted apart.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from core.cache_keys import (
    MAX_ENTRY_BYTES,
    QUANTIZED_SUFFIX,
    SHARED_SCOPE,
    api_key_scope,
    entry_key,
    entry_lookup_key,
    entry_problem,
    entry_size,
    lookup_key,
    lookup_key_of,
)
from core.cache_signing import CacheVerifier, Headers, Signature, load_verifier
from core.kafka_config import API_CLIENT_PREFIX, consumer_config
from core.model_id import public_model_id
from core.settings import ApiSettings, CacheSettings, KafkaSettings, TopicSettings
from producer_api import metrics
from producer_api.topic_reader import TopicReader, watermarks
from schemas import CACHE_ENTRY_CODEC, CaptionCacheEntry, RecordDecodeError
from schemas.errors import SchemaRegistryUnavailableError

log = logging.getLogger(__name__)

BYPASS_HEADER = "X-Captioner-Cache"
# A key is `v2:<scope>:<64 hex>:<tokens>:<precision>:<pipeline>:<revision>:<model>`; well under this.
MAX_KEY_BYTES = 4096
OLD_KEY_PREFIX = b"v1:"
# Reasons to leave a well-signed entry out: it is for instances of another profile, or callers of a
# scope this instance does not serve. Counted apart from the reader's errors.
IGNORED = frozenset({"other_profile", "other_scope"})
# How long start-up waits for the topic to be read to the end it had; past this the API serves anyway
# (misses until the reader catches up).
LOAD_WAIT_S = 10.0
# The broker holds the reader's fetch until this much is there or the wait ends: under load the reader
# wakes once per batch of titles, not once per title (each wake-up costs the API CPU), and a new title is
# served at most READ_WAIT_MS after a worker wrote it.
READ_BATCH_BYTES = 64 * 1024
READ_WAIT_MS = 500

DecodeEntry = Callable[[bytes], CaptionCacheEntry]  # either framing (schemas/framing.py)


@dataclass(frozen=True)
class Unverified:
    """An entry's signature and the value it must sign, held until the entry is first looked up: most
    entries never are, and the signature check is the costliest part of reading a record."""

    signature: Signature
    value: bytes


@dataclass(frozen=True)
class _Held:
    key: bytes  # the topic key the entry was read under
    entry: CaptionCacheEntry
    size: int
    unverified: Unverified | None


class CaptionLru:
    """Entries by look-up key (core.cache_keys.lookup_key), least recently used first out, within a count
    and an estimated byte bound; each remembers the topic key it was read under, so that a tombstone
    forgets only its own. An entry put with its signature unchecked has it checked on its first `get`,
    and is dropped (a miss, counted as the reader's bad_signature) if it fails. Thread-safe: the reader
    thread writes, the event loop reads (each call is a few dict operations, and a first look-up one
    signature check)."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: collections.OrderedDict[bytes, _Held] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, lookup: bytes) -> CaptionCacheEntry | None:
        with self._lock:
            held = self._entries.get(lookup)
            if held is None:
                return None
            self._entries.move_to_end(lookup)
        if held.unverified is None:
            return held.entry
        problem = held.unverified.signature.problem(held.key, held.unverified.value)
        with self._lock:
            if self._entries.get(lookup) is held:  # not replaced or forgotten meanwhile
                if problem is None:
                    self._entries[lookup] = replace(held, unverified=None)
                else:
                    self._drop(lookup)
        if problem is not None:
            count_skipped(f"{problem}: an entry's signature, checked on its first look-up")
            return None
        return held.entry

    def put(self, key: bytes, entry: CaptionCacheEntry, *, unverified: Unverified | None = None) -> None:
        """`key`: the topic key the entry was read under; `unverified`: its signature, to check on the
        first look-up (None: checked already)."""
        lookup = entry_lookup_key(entry)
        size = len(lookup) + entry_size(key, entry) + (len(unverified.value) if unverified else 0)
        with self._lock:
            self._drop(lookup)
            if size > self._max_bytes:
                return
            self._entries[lookup] = _Held(key=key, entry=entry, size=size, unverified=unverified)
            self._bytes += size
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                _lookup, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size

    def remove(self, key: bytes) -> None:
        """Forgets the entry read under topic key `key`, if it is the one held."""
        lookup = lookup_key_of(key)
        if lookup is None:
            return
        with self._lock:
            found = self._entries.get(lookup)
            if found is not None and found.key == key:
                self._drop(lookup)

    def _drop(self, lookup: bytes) -> None:
        found = self._entries.pop(lookup, None)
        if found is not None:
            self._bytes -= found.size


_logged_skips: set[str] = set()


def count_skipped(problem: str) -> None:
    """A record (or a held entry) left out: counted by its reason (what precedes a colon in `problem`);
    logged once per reason, since a flood of records (or an old topic) must not flood the log."""
    reason = problem.split(":")[0]
    if reason in IGNORED:  # a well-signed entry for other instances: nothing wrong with it
        metrics.CACHE_IGNORED.labels(reason=reason).inc()
        return
    metrics.CACHE_READER_ERRORS.labels(reason=reason).inc()
    if reason in _logged_skips:
        log.debug("caption-cache record skipped: %s", problem)
        return
    _logged_skips.add(reason)
    log.warning(
        "caption-cache record skipped: %s (more for this reason: counted in "
        "captioner_api_cache_reader_errors_total, logged at DEBUG)",
        problem,
    )


@dataclass(frozen=True)
class ProfileRule:
    """Which entries this instance serves: of its model and token limit, and of the revision, precision
    and image pipeline its settings name (each left at auto or unset accepts what the workers resolved);
    of the shared scope only, unless callers have scopes of their own (CAPTIONER_CACHE_SCOPE=per_key)."""

    model: str
    max_new_tokens: int
    revision: str | None
    dtype: str | None
    quantize: str
    image_pipeline: str | None
    per_key: bool

    @classmethod
    def of(cls, settings: CacheSettings) -> ProfileRule:
        return cls(
            model=public_model_id(settings.model, settings.model_id),  # as the workers name it
            max_new_tokens=settings.max_new_tokens,
            revision=settings.model_revision,
            dtype=None if settings.dtype == "auto" else settings.dtype,
            quantize=settings.quantize,
            image_pipeline=None if settings.image_pipeline == "auto" else settings.image_pipeline,
            per_key=settings.scope == "per_key",
        )

    def refusal(self, entry: CaptionCacheEntry) -> str | None:
        """None when this instance serves the entry; else other_scope or other_profile."""
        if entry.scope != SHARED_SCOPE and not self.per_key:
            return "other_scope"
        dtype, quantized, _ = entry.precision.partition(QUANTIZED_SUFFIX)
        if (
            entry.model != self.model
            or entry.max_new_tokens != self.max_new_tokens
            or self.revision not in (None, entry.revision)
            or self.dtype not in (None, dtype)
            or bool(quantized) != (self.quantize == "int8")
            or self.image_pipeline not in (None, entry.image_pipeline)
        ):
            return "other_profile"
        return None


class CachedCaptions:
    """What the request path asks: the title of an image for a caller's scope, under this instance's
    model and token limit."""

    def __init__(self, *, lru: CaptionLru, settings: CacheSettings) -> None:
        self._lru = lru
        self._rule = ProfileRule.of(settings)

    def find(self, image_sha256: str, *, scope: str = SHARED_SCOPE) -> CaptionCacheEntry | None:
        key = lookup_key(
            scope=scope,
            image_sha256=image_sha256,
            max_new_tokens=self._rule.max_new_tokens,
            model=self._rule.model,
        )
        entry = self._lru.get(key)
        (metrics.CACHE_MISSES if entry is None else metrics.CACHE_HITS).inc()
        return entry


def caller_scope(settings: CacheSettings | None, api_key: str | None) -> str:
    """The scope a caller's titles are filed and looked up under: its API key's, with
    CAPTIONER_CACHE_SCOPE=per_key and a key offered; else shared. (With auth on, the key was checked
    before this; with it off, a key is a name the caller picks, and only a caller who knows it shares
    its scope.)"""
    if settings is None or settings.scope != "per_key" or api_key is None:
        return SHARED_SCOPE
    return api_key_scope(api_key)


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
    """Reads from the offsets it is given, in batches, commits nothing, and reports each partition's end
    as it reaches it."""
    return config | {
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "fetch.min.bytes": READ_BATCH_BYTES,
        "fetch.wait.max.ms": READ_WAIT_MS,
    }


def start_offsets(watermarks: Mapping[int, tuple[int, int]], *, max_entries: int) -> dict[int, int]:
    """Where to start reading each partition (low and high watermarks given): no earlier than its share
    of the entries the LRU holds before its end, since a start further back would only read entries that
    the newer ones evict. The topic grows with every image ever seen; a start-up reads at most this."""
    share = -(-max_entries // max(len(watermarks), 1))
    return {partition: max(low, high - share) for partition, (low, high) in watermarks.items()}


class CacheRecords:
    """Each record the reader takes: checked, then kept in the LRU, forgotten (a tombstone) or counted."""

    def __init__(
        self,
        *,
        lru: CaptionLru,
        verifier: CacheVerifier,
        rule: ProfileRule,
        decode: DecodeEntry = CACHE_ENTRY_CODEC.decode,
    ) -> None:
        """decode: the entries' framing (single-object, or either when a registry is configured)."""
        self.lru = lru
        self._decode = decode
        self._verifier = verifier
        self._rule = rule

    def apply(self, key: bytes | None, value: bytes | None, headers: Headers | None) -> None:
        problem = self._keep(key, value, headers)
        if problem is not None:
            count_skipped(problem)

    def _keep(self, key: bytes | None, value: bytes | None, headers: Headers | None) -> str | None:
        """None once the record is applied; else why it was not (a reason, then a colon and details).
        The cheap checks come first: only a record under a well-formed key, within the size bound, whose
        signature header names a key this instance holds is decoded; its signature itself is checked on
        the entry's first look-up (CaptionLru.get), as most entries are never looked up."""
        if not key or len(key) > MAX_KEY_BYTES:
            return "bad_key"
        if key.startswith(OLD_KEY_PREFIX):
            return "old_version: an unsigned v1 entry"
        if lookup_key_of(key) is None:
            return "bad_key"
        if value is None:  # a tombstone: unsigned, since forgetting an entry can only cost a miss
            self.lru.remove(key)
            return None
        if len(value) > MAX_ENTRY_BYTES:
            return "too_large"
        signature = self._verifier.signature(headers)
        if isinstance(signature, str):
            return signature
        try:
            entry = self._decode(value)
        except (RecordDecodeError, SchemaRegistryUnavailableError) as exc:
            return f"undecodable: {exc.message}"
        problem = entry_problem(entry)
        if problem is not None:
            return f"invalid: {problem}"
        if entry_key(entry) != key:
            return "key_mismatch"
        refusal = self._rule.refusal(entry)
        if refusal is not None:
            return refusal
        self.lru.put(key, entry, unverified=Unverified(signature=signature, value=value))
        return None


class CacheReader:
    """Reads every partition of the cache topic, from where start_offsets says, into the LRU, then follows
    (a TopicReader's thread)."""

    def __init__(
        self, *, config: dict[str, Any], topic: str, records: CacheRecords, max_entries: int
    ) -> None:
        self.topic = topic
        self._records = records
        self._max_entries = max_entries
        self._consumer = Consumer(reader_config(config))
        self.reader = TopicReader(
            name="cache-reader",
            consumer=self._consumer,
            handle=self._handle,
            after_poll=self._count,
            on_failure=metrics.CACHE_READER_ERRORS.labels(reason="unexpected").inc,
        )
        self._behind: dict[int, int] = {}  # partition -> the end offset it had at start, until reached
        self.loaded = threading.Event()

    def start(self, *, timeout_s: float) -> None:
        metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise RuntimeError(f"the caption-cache topic {self.topic} is not available")
        ends = {
            partition: watermarks(self._consumer, self.topic, partition, timeout_s=timeout_s)
            for partition in sorted(topic.partitions)
        }
        starts = start_offsets(ends, max_entries=self._max_entries)
        for partition, (_low, high) in ends.items():
            if high > starts[partition]:
                self._behind[partition] = high
        if not self._behind:
            self.loaded.set()
        self._consumer.assign([TopicPartition(self.topic, p, offset) for p, offset in starts.items()])
        self.reader.start()

    def alive(self) -> bool:
        return self.reader.alive()

    def close(self, *, timeout_s: float) -> None:
        self.reader.close(timeout_s=timeout_s)

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._reached(message.partition(), message.offset())
            else:
                log.warning("caption-cache topic error: %s", error)
                metrics.CACHE_READER_ERRORS.labels(reason="read_error").inc()
            return
        offset = message.offset()
        try:
            self._records.apply(message.key(), message.value(), _headers(message))
        finally:  # a record that raised is read all the same: the load is not held back by it
            self._reached(message.partition(), None if offset is None else offset + 1)

    def _count(self, _messages: list[Message]) -> None:
        lru = self._records.lru
        metrics.CACHE_ENTRIES.set(len(lru))
        metrics.CACHE_BYTES.set(lru.size_bytes)

    def _reached(self, partition: int | None, next_offset: int | None) -> None:
        if partition is None or next_offset is None:
            return
        end = self._behind.get(partition)
        if end is not None and next_offset >= end:
            del self._behind[partition]
            if not self._behind:
                self.loaded.set()


def _headers(message: Message) -> Headers | None:
    """A record's headers; none when the client cannot read them (a name that is not UTF-8 makes
    confluent-kafka raise)."""
    try:
        raw = message.headers()
    except Exception:
        return None
    return list(raw.items()) if isinstance(raw, dict) else raw


@dataclass(frozen=True)
class CacheRuntime:
    captions: CachedCaptions
    reader: CacheReader


def cache_verifier(cache: CacheSettings) -> CacheVerifier | None:
    """The keys entries must be signed with; None, with one log line saying why, when this instance
    reads no entries. A key file that is set but unusable raises CacheKeyError: the API does not start."""
    if not cache.enabled:
        return None
    if cache.verify_keys_file is None:
        log.warning(
            "caption cache: this instance serves no cached titles, CAPTIONER_CACHE_VERIFY_KEYS_FILE is not "
            "set (`captioner cache keygen` makes a key pair; docs/caption-cache.md)"
        )
        return None
    return load_verifier(cache.verify_keys_file)


async def start_caption_cache(
    cache: CacheSettings,
    *,
    verifier: CacheVerifier,
    api: ApiSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    decode: DecodeEntry = CACHE_ENTRY_CODEC.decode,
    client: dict[str, Any] | None = None,
) -> CacheRuntime:
    """The LRU and its reader, started and given LOAD_WAIT_S to read the topic. `client`: more librdkafka
    configuration for the reader (its log and error callbacks)."""
    lru = CaptionLru(max_entries=api.cache_max_entries, max_bytes=api.cache_max_bytes)
    client_id = f"{API_CLIENT_PREFIX}{api.instance_id}-cache"
    reader = CacheReader(
        config=consumer_config(kafka, topics, client_id=client_id, group_id=client_id) | (client or {}),
        topic=topics.captions,
        records=CacheRecords(lru=lru, verifier=verifier, rule=ProfileRule.of(cache), decode=decode),
        max_entries=api.cache_max_entries,
    )
    try:
        await asyncio.to_thread(reader.start, timeout_s=30.0)
        started = time.monotonic()
        loaded = await asyncio.to_thread(reader.loaded.wait, LOAD_WAIT_S)
    except BaseException:  # a start that fails or is cancelled leaves no consumer or thread behind
        await asyncio.to_thread(reader.close, timeout_s=LOAD_WAIT_S)
        raise
    if loaded:
        log.info(
            "caption cache: %d entries read from %s in %.1f s (verify keys %s)",
            len(lru),
            topics.captions,
            time.monotonic() - started,
            ", ".join(verifier.key_ids),
        )
    else:
        log.warning(
            "caption cache: %s not read to its end within %g s; serving", topics.captions, LOAD_WAIT_S
        )
    return CacheRuntime(captions=CachedCaptions(lru=lru, settings=cache), reader=reader)
