"""Caption-cache entries from a worker, with a stand-in producer: written after the reply, never in the
job's way."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaException

from core.cache_keys import cache_key
from core.offsets import OffsetTracker
from core.settings import TopicSettings
from inference_consumer.cache_writer import CacheWriter, Captioned
from inference_consumer.outcomes import OutcomePublisher
from schemas import CACHE_ENTRY_CODEC
from tests.inference_consumer.test_outcomes import make_job

CAPTIONS = "captioner.captions"


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


@pytest.fixture
def producer() -> Producer:
    return Producer()


@pytest.fixture
def writer(producer: Producer) -> Iterator[CacheWriter]:
    writer = CacheWriter(producer=producer, topic=CAPTIONS)  # type: ignore[arg-type]
    writer.start()
    yield writer
    writer.close(5.0)


def test_the_entry_follows_the_acknowledged_reply_under_its_key(
    writer: CacheWriter, producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_over: list[Captioned] = []
    submit = writer.submit
    monkeypatch.setattr(
        writer, "submit", lambda captioned: (handed_over.append(captioned), submit(captioned))
    )
    outcomes = OutcomePublisher(
        producer=producer,  # type: ignore[arg-type]
        tracker=OffsetTracker(),
        topics=TopicSettings(captions=CAPTIONS),
        model_name="models/tiny",
        worker_id="w-1",
        group_id="g",
        cache=writer,
    )
    outcomes.succeeded(make_job(), "a title", inference_ms=12.5, max_new_tokens=7)
    assert handed_over == []  # not before the broker acknowledged the reply

    producer.deliver("results")
    outcomes.serve()
    assert len(handed_over) == 1
    wait_for(lambda: len(producer.to(CAPTIONS)) == 1)
    [record] = producer.to(CAPTIONS)
    entry = CACHE_ENTRY_CODEC.decode(record["value"])
    assert record["key"] == cache_key(
        image_sha256=hashlib.sha256(b"img").hexdigest(), model="models/tiny", max_new_tokens=7
    )
    assert (entry.title, entry.model, entry.worker_id) == ("a title", "models/tiny", "w-1")
    assert entry.correlation_id == "c-1"
    assert (entry.max_new_tokens, entry.attempt, entry.inference_ms) == (7, 1, 12.5)


@pytest.mark.parametrize("refusal", [BufferError, KafkaException])
def test_a_refused_entry_never_holds_the_job(refusal: type[Exception]) -> None:
    producer = Producer(refuse=refusal)
    writer = CacheWriter(producer=producer, topic=CAPTIONS)  # type: ignore[arg-type]
    writer.start()
    tracker = OffsetTracker()
    outcomes = OutcomePublisher(
        producer=producer,  # type: ignore[arg-type]
        tracker=tracker,
        topics=TopicSettings(captions=CAPTIONS),
        model_name="m",
        worker_id="w",
        group_id="g",
        cache=writer,
    )
    job = make_job()
    tracker.track(job.topic, job.partition, job.offset)
    outcomes.succeeded(job, "a title", inference_ms=1, max_new_tokens=20)
    producer.deliver("results")
    outcomes.serve()
    writer.close(5.0)
    assert [(tp.partition, tp.offset) for tp in tracker.take_positions()] == [(3, 8)]
    assert producer.to(CAPTIONS) == []
