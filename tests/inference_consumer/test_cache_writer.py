"""Caption-cache entries from a worker, with a stand-in producer: written after the reply, signed, filed
under the worker's profile and the caller's scope, never in the job's way."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.cache_keys import ModelProfile, entry_key
from core.cache_signing import CacheSigner, CacheVerifier, write_key_pair
from core.offsets import OffsetTracker
from core.settings import CacheSettings, TopicSettings
from inference_consumer.cache_writer import CacheWriter, Captioned, load_cache_signer
from inference_consumer.delivery import DirectSink
from inference_consumer.outcomes import OutcomePublisher
from schemas import CACHE_ENTRY_CODEC
from schemas import headers as record_headers
from tests.inference_consumer.test_outcomes import make_job

CAPTIONS = "captioner.captions"
PROFILE = ModelProfile(
    model="models/tiny", revision="sha256-" + "cd" * 32, precision="float32", image_pipeline="pil"
)
SIGNER = CacheSigner(private_key=Ed25519PrivateKey.generate())


@dataclass
class Producer:
    """Records produce() calls (thread-safe); `refuse` makes the cache topic's produce raise."""

    refuse: type[Exception] | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def produce(self, topic: str, **kwargs: Any) -> None:
        if topic == CAPTIONS and self.refuse is not None:
            raise self.refuse("refused")
        with self.lock:
            self.sent.append({"topic": topic, **kwargs})

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def deliver(self, topic: str) -> None:
        with self.lock:
            records = [record for record in self.sent if record["topic"] == topic]
        for record in records:
            if callback := record.pop("on_delivery", None):
                callback(None, None)

    def to(self, topic: str) -> list[dict[str, Any]]:
        with self.lock:
            return [record for record in self.sent if record["topic"] == topic]


def wait_for(condition: Callable[[], bool], *, deadline_s: float = 10.0) -> None:
    give_up = time.monotonic() + deadline_s
    while not condition():  # the writer thread has no event to wait on
        assert time.monotonic() < give_up, "condition not met before the deadline"
        time.sleep(0.01)


def new_writer(producer: Producer) -> CacheWriter:
    return CacheWriter(sink=DirectSink(producer), topic=CAPTIONS, signer=SIGNER, profile=PROFILE)  # type: ignore[arg-type]


def new_outcomes(
    producer: Producer, writer: CacheWriter, tracker: OffsetTracker | None = None
) -> OutcomePublisher:
    return OutcomePublisher(
        sink=DirectSink(producer),  # type: ignore[arg-type]
        tracker=tracker or OffsetTracker(),
        topics=TopicSettings(captions=CAPTIONS),
        model_name=PROFILE.model,
        worker_id="w-1",
        group_id="g",
        cache=writer,
    )


@pytest.fixture
def producer() -> Producer:
    return Producer()


@pytest.fixture
def writer(producer: Producer) -> Iterator[CacheWriter]:
    writer = new_writer(producer)
    writer.start()
    yield writer
    writer.close(5.0)


def test_the_signed_entry_follows_the_acknowledged_reply_under_its_key(
    writer: CacheWriter, producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_over: list[Captioned] = []
    submit = writer.submit
    monkeypatch.setattr(
        writer, "submit", lambda captioned: (handed_over.append(captioned), submit(captioned))
    )
    outcomes = new_outcomes(producer, writer)
    outcomes.succeeded(make_job(), "a title", inference_ms=12.5, max_new_tokens=7)
    assert handed_over == []  # not before the broker acknowledged the reply

    producer.deliver("results")
    outcomes.serve()
    assert len(handed_over) == 1
    wait_for(lambda: len(producer.to(CAPTIONS)) == 1)
    [record] = producer.to(CAPTIONS)
    entry = CACHE_ENTRY_CODEC.decode(record["value"])
    assert entry.image_sha256 == hashlib.sha256(b"img").hexdigest()
    assert (entry.model, entry.revision, entry.precision, entry.image_pipeline) == (
        PROFILE.model,
        PROFILE.revision,
        PROFILE.precision,
        PROFILE.image_pipeline,
    )
    assert record["key"] == entry_key(entry) and entry.scope == "shared"
    assert (entry.title, entry.worker_id, entry.correlation_id) == ("a title", "w-1", "c-1")
    assert (entry.max_new_tokens, entry.attempt, entry.inference_ms) == (7, 1, 12.5)
    verifier = CacheVerifier(public_keys=[SIGNER.public_key])
    assert verifier.problem(record["key"], record["value"], record["headers"]) is None


def test_the_callers_scope_files_the_entry_and_a_malformed_one_writes_none(
    writer: CacheWriter, producer: Producer
) -> None:
    outcomes = new_outcomes(producer, writer)
    scope = "0123456789abcdef" * 2
    for header in (scope.encode(), b"not a scope"):
        job = make_job(extra_headers={record_headers.CACHE_SCOPE: header})
        outcomes.succeeded(job, "a title", inference_ms=1, max_new_tokens=20)
    producer.deliver("results")
    outcomes.serve()
    wait_for(lambda: len(producer.to(CAPTIONS)) >= 1)
    writer.close(5.0)
    [record] = producer.to(CAPTIONS)
    assert CACHE_ENTRY_CODEC.decode(record["value"]).scope == scope
    assert record["key"].startswith(f"v2:{scope}:".encode())


@pytest.mark.parametrize("refusal", [BufferError, KafkaException])
def test_a_refused_entry_never_holds_the_job(refusal: type[Exception]) -> None:
    producer = Producer(refuse=refusal)
    writer = new_writer(producer)
    writer.start()
    tracker = OffsetTracker()
    outcomes = new_outcomes(producer, writer, tracker)
    job = make_job()
    tracker.track(job.topic, job.partition, job.offset)
    outcomes.succeeded(job, "a title", inference_ms=1, max_new_tokens=20)
    producer.deliver("results")
    outcomes.serve()
    writer.close(5.0)
    assert [(tp.partition, tp.offset) for tp in tracker.take_positions()] == [(3, 8)]
    assert producer.to(CAPTIONS) == []


def test_a_worker_without_a_signing_key_writes_nothing_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_cache_signer(None) is None
    assert load_cache_signer(CacheSettings(enabled=False)) is None
    assert caplog.records == []
    assert load_cache_signer(CacheSettings()) is None
    [line] = caplog.records
    assert "CAPTIONER_CACHE_SIGNING_KEY_FILE is not set" in line.getMessage()
    private_path, _ = write_key_pair(tmp_path)
    signer = load_cache_signer(CacheSettings(signing_key_file=private_path))
    assert signer is not None and len(signer.key_id) == 16
