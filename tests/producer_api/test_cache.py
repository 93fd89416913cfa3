"""The API's caption cache: LRU bounds, hostile topic records, the opt-out headers, hits in process."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from core.cache_keys import MAX_ENTRY_BYTES, cache_key, entry_key, entry_size
from core.settings import CacheSettings
from producer_api.cache import CachedCaptions, CaptionLru, apply_record, cache_bypassed
from schemas import CACHE_ENTRY_CODEC, CaptionCacheEntry
from tests.producer_api.conftest import PREDICT, StartApi
from tests.support.images import make_image_bytes

MODEL = "models/tiny"


def make_entry(image: bytes = b"picture", **fields: object) -> CaptionCacheEntry:
    defaults: dict[str, object] = {
        "image_sha256": hashlib.sha256(image).hexdigest(),
        "model": MODEL,
        "max_new_tokens": 20,
        "title": "a red bus",
        "worker_id": "worker-7",
        "correlation_id": "c-1",
        "attempt": 2,
        "inference_ms": 123.456,
        "completed_at": datetime(2024, 5, 1, tzinfo=UTC),
    }
    return CaptionCacheEntry(**{**defaults, **fields})  # type: ignore[arg-type]


def reader_errors(reason: str) -> float:
    return REGISTRY.get_sample_value("captioner_api_cache_reader_errors_total", {"reason": reason}) or 0.0


def test_the_lru_keeps_at_most_its_entries_and_drops_the_least_recently_used() -> None:
    lru = CaptionLru(max_entries=2, max_bytes=1 << 20)
    first, second, third = (make_entry(bytes([n])) for n in range(3))
    lru.put(entry_key(first), first)
    lru.put(entry_key(second), second)
    assert lru.get(entry_key(first)) == first  # now the most recently used
    lru.put(entry_key(third), third)
    assert len(lru) == 2
    assert lru.get(entry_key(second)) is None
    assert lru.get(entry_key(first)) == first and lru.get(entry_key(third)) == third


def test_the_lru_keeps_within_its_bytes() -> None:
    entries = [make_entry(bytes([n]), title="t" * 1000) for n in range(10)]
    one = entry_size(entry_key(entries[0]), entries[0])
    lru = CaptionLru(max_entries=100, max_bytes=3 * one)
    for entry in entries:
        lru.put(entry_key(entry), entry)
    assert len(lru) == 3 and lru.size_bytes == 3 * one
    assert [lru.get(entry_key(entry)) for entry in entries[-3:]] == entries[-3:]


def test_an_entry_larger_than_the_whole_lru_is_not_kept() -> None:
    entry = make_entry(title="t" * 2000)
    lru = CaptionLru(max_entries=100, max_bytes=1024)
    lru.put(entry_key(entry), entry)
    assert len(lru) == 0 and lru.size_bytes == 0


def test_a_replaced_entry_is_counted_once() -> None:
    lru = CaptionLru(max_entries=100, max_bytes=1 << 20)
    entry = make_entry()
    lru.put(entry_key(entry), entry)
    lru.put(entry_key(entry), make_entry(title="newer"))
    assert len(lru) == 1 and lru.size_bytes == entry_size(entry_key(entry), make_entry(title="newer"))
    assert lru.get(entry_key(entry)) == make_entry(title="newer")


def test_a_valid_record_is_kept_and_a_tombstone_forgets_it() -> None:
    lru = CaptionLru(max_entries=10, max_bytes=1 << 20)
    entry = make_entry()
    apply_record(lru, entry_key(entry), CACHE_ENTRY_CODEC.encode(entry))
    assert lru.get(entry_key(entry)) == entry
    apply_record(lru, entry_key(entry), None)
    assert lru.get(entry_key(entry)) is None


def test_hostile_records_are_skipped_and_counted() -> None:
    lru = CaptionLru(max_entries=10, max_bytes=1 << 20)
    entry = make_entry()
    other_key = cache_key(image_sha256=entry.image_sha256, model=MODEL, max_new_tokens=5)
    cases = {
        "key_mismatch": (other_key, CACHE_ENTRY_CODEC.encode(entry)),
        "undecodable": (entry_key(entry), b"\xc3\x01garbage"),
        "too_large": (entry_key(entry), b"\x00" * (MAX_ENTRY_BYTES + 1)),
        "bad_key": (None, CACHE_ENTRY_CODEC.encode(entry)),
        "invalid": (
            entry_key(make_entry(max_new_tokens=0)),
            CACHE_ENTRY_CODEC.encode(make_entry(max_new_tokens=0)),
        ),
    }
    for reason, (key, value) in cases.items():
        before = reader_errors(reason)
        apply_record(lru, key, value)
        assert reader_errors(reason) == before + 1, reason
    assert len(lru) == 0


@given(key=st.one_of(st.none(), st.binary(max_size=64)), value=st.one_of(st.none(), st.binary(max_size=300)))
def test_no_record_makes_the_reader_raise(key: bytes | None, value: bytes | None) -> None:
    apply_record(CaptionLru(max_entries=10, max_bytes=1 << 20), key, value)


def test_the_opt_out_headers() -> None:
    assert cache_bypassed(CIMultiDict({"Cache-Control": "no-cache"}))
    assert cache_bypassed(CIMultiDict({"cache-control": "private, No-Cache"}))
    assert cache_bypassed(CIMultiDict({"Cache-Control": "max-age=0"}))
    assert cache_bypassed(CIMultiDict([("Cache-Control", "private"), ("Cache-Control", "no-cache")]))
    assert cache_bypassed(CIMultiDict({"X-Captioner-Cache": "Bypass"}))
    assert not cache_bypassed(CIMultiDict())
    assert not cache_bypassed(CIMultiDict({"Cache-Control": "max-age=60, no-transform"}))
    assert not cache_bypassed(CIMultiDict({"X-Captioner-Cache": "use"}))


def lookups(kind: str) -> float:
    return REGISTRY.get_sample_value(f"captioner_api_cache_{kind}_total") or 0.0


async def test_a_hit_answers_like_the_fresh_answer_without_publishing(serve_api: StartApi) -> None:
    image = make_image_bytes("PNG")
    settings = CacheSettings(model="m", max_new_tokens=20)
    lru = CaptionLru(max_entries=10, max_bytes=1 << 20)
    api = await serve_api(cache=CachedCaptions(lru=lru, settings=settings))

    hits, misses = lookups("hits"), lookups("misses")
    fresh = await api.post(image, "image/png")
    assert fresh.status == 200 and fresh.json()["cached"] is False
    assert len(api.publisher.published) == 1 and lookups("misses") == misses + 1
    # What the worker would write once its reply is acknowledged (FakePublisher answers model "m", "w").
    job = api.publisher.published[0]
    title = fresh.json()["title"]
    entry = make_entry(image, model="m", title=title, worker_id="w", attempt=1, inference_ms=0.0)
    apply_record(lru, entry_key(entry), CACHE_ENTRY_CODEC.encode(entry))

    cached = await api.post(image, "image/png")
    assert cached.status == 200 and len(api.publisher.published) == 1 and lookups("hits") == hits + 1
    fresh_body, cached_body = fresh.json(), cached.json()
    assert cached_body.pop("cached") is True and fresh_body.pop("cached") is False
    assert cached_body.keys() == fresh_body.keys()
    for varying in ("id", "latency_ms"):
        cached_body.pop(varying), fresh_body.pop(varying)
    assert cached_body == fresh_body
    assert job.max_new_tokens is None  # the API leaves the limit to the worker, whose limit is in the key


async def test_the_opt_out_header_captions_afresh(serve_api: StartApi) -> None:
    image = make_image_bytes("PNG", seed=3)
    lru = CaptionLru(max_entries=10, max_bytes=1 << 20)
    entry = make_entry(image, model="m", title="an old title")
    lru.put(entry_key(entry), entry)
    api = await serve_api(cache=CachedCaptions(lru=lru, settings=CacheSettings(model="m", max_new_tokens=20)))

    for headers in ({"Cache-Control": "no-cache"}, {"X-Captioner-Cache": "bypass"}):
        async with api.client.post(
            PREDICT, data=image, headers={"Content-Type": "image/png", **headers}
        ) as response:
            body = await response.json()
        assert body["title"] == f"a picture of {len(image)} bytes" and body["cached"] is False
    assert len(api.publisher.published) == 2
    hit = await api.post(image, "image/png")
    assert hit.json()["title"] == "an old title" and hit.json()["cached"] is True


async def test_another_model_or_token_limit_misses(serve_api: StartApi) -> None:
    image = make_image_bytes("PNG", seed=4)
    lru = CaptionLru(max_entries=10, max_bytes=1 << 20)
    for entry in (make_entry(image, model="other"), make_entry(image, model="m", max_new_tokens=5)):
        lru.put(entry_key(entry), entry)
    api = await serve_api(cache=CachedCaptions(lru=lru, settings=CacheSettings(model="m", max_new_tokens=20)))
    response = await api.post(image, "image/png")
    assert response.json()["cached"] is False and len(api.publisher.published) == 1
