"""The API's caption cache: LRU bounds, signed and hostile topic records, the profile and scope an
instance serves, the bounded start, the opt-out headers, hits in process."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from core.cache_keys import (
    MAX_ENTRY_BYTES,
    SHARED_SCOPE,
    api_key_scope,
    entry_key,
    entry_lookup_key,
    entry_size,
)
from core.cache_signing import CacheSigner, CacheVerifier, Signature, write_key_pair
from core.settings import CacheSettings
from producer_api.cache import (
    CachedCaptions,
    CacheRecords,
    CaptionLru,
    ProfileRule,
    cache_bypassed,
    cache_verifier,
    caller_scope,
    reader_config,
    start_offsets,
)
from schemas import CACHE_ENTRY_CODEC, CaptionCacheEntry
from schemas.headers import CACHE_SCOPE, CACHE_SIGNATURE, CACHE_SIGNATURE_KEY_ID
from tests.producer_api.conftest import PREDICT, StartApi
from tests.support.cache_entries import MODEL, REVISION, make_entry, new_signer, signed
from tests.support.images import make_image_bytes

# Two callers' API keys (the API takes keys of 32 characters or more).
KEY_A, KEY_B = "a" * 32 + "-caller", "b" * 32 + "-caller"

SIGNER = new_signer()


def settings(**fields: object) -> CacheSettings:
    return CacheSettings(**{"model": MODEL, "max_new_tokens": 20, **fields})  # type: ignore[arg-type]


def records(
    lru: CaptionLru | None = None, *, signers: tuple[CacheSigner, ...] = (SIGNER,), **fields: object
) -> CacheRecords:
    """An instance's record checks: trusting `signers`, serving the profile `fields` give."""
    verifier = CacheVerifier(public_keys=[signer.public_key for signer in signers])
    return CacheRecords(
        lru=lru or CaptionLru(max_entries=10, max_bytes=1 << 20),
        verifier=verifier,
        rule=ProfileRule.of(settings(**fields)),
    )


def served(checks: CacheRecords, entry: CaptionCacheEntry) -> bool:
    return checks.lru.get(entry_lookup_key(entry)) == entry


def reader_errors(reason: str) -> float:
    return REGISTRY.get_sample_value("captioner_api_cache_reader_errors_total", {"reason": reason}) or 0.0


def ignored(reason: str) -> float:
    return REGISTRY.get_sample_value("captioner_api_cache_ignored_total", {"reason": reason}) or 0.0


def test_the_lru_keeps_at_most_its_entries_and_drops_the_least_recently_used() -> None:
    lru = CaptionLru(max_entries=2, max_bytes=1 << 20)
    first, second, third = (make_entry(bytes([n])) for n in range(3))
    lru.put(entry_key(first), first)
    lru.put(entry_key(second), second)
    assert lru.get(entry_lookup_key(first)) == first  # now the most recently used
    lru.put(entry_key(third), third)
    assert len(lru) == 2
    assert lru.get(entry_lookup_key(second)) is None
    assert lru.get(entry_lookup_key(first)) == first and lru.get(entry_lookup_key(third)) == third


def test_the_lru_keeps_within_its_bytes() -> None:
    entries = [make_entry(bytes([n]), title="t" * 1000) for n in range(10)]
    one = len(entry_lookup_key(entries[0])) + entry_size(entry_key(entries[0]), entries[0])
    lru = CaptionLru(max_entries=100, max_bytes=3 * one)
    for entry in entries:
        lru.put(entry_key(entry), entry)
    assert len(lru) == 3 and lru.size_bytes == 3 * one
    assert [lru.get(entry_lookup_key(entry)) for entry in entries[-3:]] == entries[-3:]


def test_an_entry_larger_than_the_whole_lru_is_not_kept() -> None:
    entry = make_entry(title="t" * 2000)
    lru = CaptionLru(max_entries=100, max_bytes=1024)
    lru.put(entry_key(entry), entry)
    assert len(lru) == 0 and lru.size_bytes == 0


def test_a_replaced_entry_is_counted_once() -> None:
    lru = CaptionLru(max_entries=100, max_bytes=1 << 20)
    entry, newer = make_entry(), make_entry(title="newer")
    lru.put(entry_key(entry), entry)
    lru.put(entry_key(newer), newer)
    assert len(lru) == 1
    assert lru.size_bytes == len(entry_lookup_key(newer)) + entry_size(entry_key(newer), newer)
    assert lru.get(entry_lookup_key(entry)) == newer


def test_a_signed_record_is_kept_and_a_tombstone_forgets_it() -> None:
    checks = records()
    entry = make_entry()
    checks.apply(*signed(entry, SIGNER))
    assert served(checks, entry)
    checks.apply(entry_key(replace(entry, precision="float16")), None, None)  # another profile's
    assert served(checks, entry)
    checks.apply(entry_key(entry), None, None)  # unsigned: forgetting can only cost a miss
    assert not served(checks, entry)


def test_forged_and_hostile_records_are_skipped_and_counted() -> None:
    checks = records()
    entry = make_entry(title="a forged title")
    key, value, headers = signed(entry, SIGNER)
    other_key, other_value, other_headers = signed(make_entry(b"other picture"), SIGNER)
    [(_, signature), (_, key_id)] = headers
    elsewhere = replace(entry, max_new_tokens=5)  # validly signed, but filed under another entry's key
    v1_key = f"v1:{entry.image_sha256}:20:{MODEL}".encode()
    cases: dict[str, list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]]] = {
        "unsigned": [(key, value, None), (key, value, [("traceparent", b"00-1-2-01")])],
        "unknown_key": [signed(entry, new_signer())],
        "bad_signature_header": [
            (key, value, [(CACHE_SIGNATURE, b"not hex"), (CACHE_SIGNATURE_KEY_ID, key_id)]),
            (key, value, [(CACHE_SIGNATURE, signature)]),
            (key, value, [*headers, (CACHE_SIGNATURE, signature)]),
        ],
        "old_version": [(v1_key, value, None), (v1_key, value, SIGNER.headers(v1_key, value))],
        "key_mismatch": [
            (entry_key(elsewhere), value, SIGNER.headers(entry_key(elsewhere), value)),
            (other_key, value, headers),  # our signature of this value, moved to another key
            (key, other_value, headers),  # ... and to another value
            (key, other_value, other_headers),  # another record's own signature, on this key
        ],
        "undecodable": [(key, b"\xc3\x01garbage", SIGNER.headers(key, b"\xc3\x01garbage"))],
        "too_large": [(key, b"\x00" * (MAX_ENTRY_BYTES + 1), None)],
        "bad_key": [(None, value, headers), (b"v2:short", value, headers), (b"k" * 5000, value, headers)],
        "invalid": [signed(make_entry(max_new_tokens=0), SIGNER)],
    }
    for reason, forged in cases.items():
        before = reader_errors(reason)
        for record in forged:
            checks.apply(*record)
        assert reader_errors(reason) == before + len(forged), reason
    assert len(checks.lru) == 0
    # A record whose signature header names a trusted key is held with its signature unchecked until
    # its first look-up, which checks it: a forged one is then a miss, dropped and counted.
    retitled = CACHE_ENTRY_CODEC.encode(replace(entry, title="another forged title"))
    for record in [
        (key, value, [signed(entry, new_signer())[2][0], (CACHE_SIGNATURE_KEY_ID, key_id)]),  # another key's
        (key, retitled, headers),  # our signature of the entry, on another title under its key
    ]:
        before = reader_errors("bad_signature")
        checks.apply(*record)
        assert checks.lru.get(entry_lookup_key(entry)) is None
        assert reader_errors("bad_signature") == before + 1
        assert len(checks.lru) == 0


def test_a_signature_is_checked_once_on_the_first_look_up_only(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = records()
    entries = [make_entry(f"picture {index}".encode()) for index in range(3)]
    checked: list[bytes] = []
    real_problem = Signature.problem

    def counted(self: Signature, key: bytes, value: bytes) -> str | None:
        checked.append(key)
        return real_problem(self, key, value)

    monkeypatch.setattr(Signature, "problem", counted)
    for entry in entries:
        checks.apply(*signed(entry, SIGNER))
    assert checked == [] and len(checks.lru) == 3

    assert served(checks, entries[0]) and served(checks, entries[0])

    assert checked == [entry_key(entries[0])]


def test_either_of_two_verify_keys_is_trusted() -> None:
    """Key rotation: instances trust the old and the new key while workers move to the new one."""
    old, new = new_signer(), new_signer()
    checks = records(signers=(old, new))
    first, second = make_entry(b"one"), make_entry(b"two")
    checks.apply(*signed(first, old))
    checks.apply(*signed(second, new))
    assert served(checks, first) and served(checks, second)


def test_another_profile_is_not_served() -> None:
    pinned = {"model_revision": REVISION, "dtype": "float32", "image_pipeline": "pil"}
    checks = records(**pinned)
    others = [
        make_entry(revision="0" * 40),
        make_entry(precision="float16"),
        make_entry(precision="float32+int8"),
        make_entry(image_pipeline="tensor"),
        make_entry(model="models/base"),
        make_entry(max_new_tokens=3),
    ]
    before = ignored("other_profile")
    for entry in others:
        checks.apply(*signed(entry, SIGNER))
    assert ignored("other_profile") == before + len(others)
    assert len(checks.lru) == 0
    checks.apply(*signed(make_entry(), SIGNER))
    assert served(checks, make_entry())


def test_settings_left_at_auto_accept_what_the_workers_resolved() -> None:
    checks = records()  # revision unset, dtype and pipeline auto, not quantized
    for entry in (make_entry(b"1", precision="float16"), make_entry(b"2", image_pipeline="tensor")):
        checks.apply(*signed(entry, SIGNER))
        assert served(checks, entry)
    quantized = make_entry(b"3", precision="float16+int8")  # quantization has no auto: it must match
    checks.apply(*signed(quantized, SIGNER))
    assert not served(checks, quantized)
    checks = records(quantize="int8")
    checks.apply(*signed(quantized, SIGNER))
    assert served(checks, quantized)


def test_a_callers_scope_is_its_own() -> None:
    scope_a, scope_b = api_key_scope(KEY_A), api_key_scope(KEY_B)
    per_key = settings(scope="per_key")
    assert caller_scope(per_key, KEY_A) == scope_a
    assert caller_scope(per_key, None) == SHARED_SCOPE
    assert caller_scope(settings(), KEY_A) == SHARED_SCOPE
    assert caller_scope(None, KEY_A) == SHARED_SCOPE

    checks = records(scope="per_key")
    entry_a = make_entry(scope=scope_a)
    checks.apply(*signed(entry_a, SIGNER))
    captions = CachedCaptions(lru=checks.lru, settings=per_key)
    assert captions.find(entry_a.image_sha256, scope=scope_a) == entry_a
    assert captions.find(entry_a.image_sha256, scope=scope_b) is None
    assert captions.find(entry_a.image_sha256, scope=SHARED_SCOPE) is None

    shared = records()  # an instance without per-key scopes serves none of them
    before = ignored("other_scope")
    shared.apply(*signed(entry_a, SIGNER))
    assert len(shared.lru) == 0 and ignored("other_scope") == before + 1


@given(
    key=st.one_of(st.none(), st.binary(max_size=64), st.just(entry_key(make_entry()))),
    value=st.one_of(st.none(), st.binary(max_size=300)),
    headers=st.one_of(
        st.none(),
        st.lists(
            st.tuples(
                st.sampled_from([CACHE_SIGNATURE, CACHE_SIGNATURE_KEY_ID, "other"]),
                st.one_of(st.none(), st.binary(max_size=140), st.text(max_size=140)),
            ),
            max_size=4,
        ),
    ),
)
def test_no_record_makes_the_reader_raise(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | str | None]] | None
) -> None:
    records().apply(key, value, headers)


def test_an_instance_without_verify_keys_reads_nothing_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert cache_verifier(settings(enabled=False)) is None
    assert caplog.records == []
    assert cache_verifier(settings()) is None
    [line] = caplog.records
    assert "CAPTIONER_CACHE_VERIFY_KEYS_FILE is not set" in line.getMessage()
    _, public_path = write_key_pair(tmp_path)
    verifier = cache_verifier(settings(verify_keys_file=public_path))
    assert verifier is not None and len(verifier.key_ids) == 1


def test_a_start_reads_no_more_than_the_lru_holds() -> None:
    watermarks = {0: (0, 1_000_000), 1: (500, 600), 2: (0, 0), 3: (10, 20_000)}
    assert start_offsets(watermarks, max_entries=40_000) == {0: 990_000, 1: 500, 2: 0, 3: 10_000}
    assert start_offsets({0: (0, 7)}, max_entries=3) == {0: 4}


def test_the_reader_asks_the_broker_for_batches_of_titles_and_waits_at_most_a_second() -> None:
    config = reader_config({"bootstrap.servers": "127.0.0.1:9092"})
    record = len(CACHE_ENTRY_CODEC.encode(make_entry())) + 200  # the key and the signature headers besides

    assert config["fetch.min.bytes"] >= 100 * record  # one wake-up per hundred titles or more under load
    assert 0 < config["fetch.wait.max.ms"] <= 1000  # how stale a new title can be, at most
    assert config["bootstrap.servers"] == "127.0.0.1:9092" and config["enable.auto.commit"] is False


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
    checks = records(model="m")
    api = await serve_api(cache=CachedCaptions(lru=checks.lru, settings=settings(model="m")))

    hits, misses = lookups("hits"), lookups("misses")
    fresh = await api.post(image, "image/png")
    assert fresh.status == 200 and fresh.json()["cached"] is False
    assert len(api.publisher.published) == 1 and lookups("misses") == misses + 1
    # What the worker would write once its reply is acknowledged (FakePublisher answers model "m", "w").
    job = api.publisher.published[0]
    title = fresh.json()["title"]
    entry = make_entry(image, model="m", title=title, worker_id="w", attempt=1, inference_ms=0.0)
    checks.apply(*signed(entry, SIGNER))

    cached = await api.post(image, "image/png")
    assert cached.status == 200 and len(api.publisher.published) == 1 and lookups("hits") == hits + 1
    fresh_body, cached_body = fresh.json(), cached.json()
    assert cached_body.pop("cached") is True and fresh_body.pop("cached") is False
    assert cached_body.keys() == fresh_body.keys()
    for varying in ("id", "latency_ms"):
        cached_body.pop(varying), fresh_body.pop(varying)
    assert cached_body == fresh_body
    assert job.max_new_tokens is None  # the API leaves the limit to the worker, whose limit is in the key
    assert CACHE_SCOPE not in dict(api.publisher.headers[0])  # shared: no scope header


async def test_per_key_scopes_keep_callers_apart(serve_api: StartApi) -> None:
    image = make_image_bytes("PNG", seed=5)
    per_key = settings(model="m", scope="per_key")
    checks = records(model="m", scope="per_key")
    api = await serve_api(
        cache=CachedCaptions(lru=checks.lru, settings=per_key),
        cache_settings=per_key,
        keys=f"{KEY_A},{KEY_B}",
    )

    async def caption(key: str) -> bool:
        async with api.client.post(
            PREDICT, data=image, headers={"Content-Type": "image/png", "X-API-Key": key}
        ) as response:
            assert response.status == 200
            cached: bool = (await response.json())["cached"]
            return cached

    assert await caption(KEY_A) is False
    scope_a = dict(api.publisher.headers[-1])[CACHE_SCOPE].decode()
    assert scope_a == api_key_scope(KEY_A)
    checks.apply(*signed(make_entry(image, model="m", scope=scope_a), SIGNER))  # the worker's entry
    assert await caption(KEY_A) is True
    assert await caption(KEY_B) is False  # A's title is not B's to see
    assert dict(api.publisher.headers[-1])[CACHE_SCOPE].decode() == api_key_scope(KEY_B)
    assert len(api.publisher.published) == 2


async def test_a_batchs_items_carry_their_callers_scope(serve_api: StartApi) -> None:
    per_key = settings(model="m", scope="per_key")
    checks = records(model="m", scope="per_key")
    image = make_image_bytes("PNG", seed=6)
    checks.apply(*signed(make_entry(image, model="m", scope=api_key_scope(KEY_A)), SIGNER))
    api = await serve_api(
        cache=CachedCaptions(lru=checks.lru, settings=per_key),
        cache_settings=per_key,
        keys=f"{KEY_A},{KEY_B}",
    )
    body = json.dumps({"images": [{"image": base64.b64encode(image).decode()}] * 2}).encode()
    for key, cached in ((KEY_A, True), (KEY_B, False)):
        async with api.client.post(
            "/api/v1/predictions:batch",
            data=body,
            headers={"Content-Type": "application/json", "X-API-Key": key},
        ) as response:
            assert [item["cached"] for item in (await response.json())["results"]] == [cached] * 2
    assert [dict(headers)[CACHE_SCOPE].decode() for headers in api.publisher.headers] == [
        api_key_scope(KEY_B)
    ] * 2


async def test_the_opt_out_header_captions_afresh(serve_api: StartApi) -> None:
    image = make_image_bytes("PNG", seed=3)
    checks = records(model="m")
    checks.apply(*signed(make_entry(image, model="m", title="an old title"), SIGNER))
    api = await serve_api(cache=CachedCaptions(lru=checks.lru, settings=settings(model="m")))

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
    api = await serve_api(cache=CachedCaptions(lru=lru, settings=settings(model="m")))
    response = await api.post(image, "image/png")
    assert response.json()["cached"] is False and len(api.publisher.published) == 1
