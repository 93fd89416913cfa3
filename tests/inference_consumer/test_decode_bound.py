"""The worker never waits on one image without a bound: a batch's jobs whose pixels are not ready in time
end on their own (image_too_costly, or a retry when no decode thread took them), the rest is captioned,
and a job whose deadline passed while its image decoded is not run. The worker's batch step runs with the
real outcome publisher on a stand-in producer and caption cache."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import torch

from core.offsets import OffsetTracker
from core.settings import ImageSettings, KafkaSettings, TopicSettings, WorkerSettings
from inference_consumer.cache_writer import Captioned
from inference_consumer.delivery import DirectSink
from inference_consumer.jobs import Job, ReplyAddress
from inference_consumer.outcomes import OutcomePublisher
from inference_consumer.worker import InferenceWorker
from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionRequest, ReplyStatus
from schemas import headers as record_headers
from tests.support.waiting import wait_until

TOPICS = TopicSettings(retry_delays_s=(1.0, 2.0))
BOUND_S = 0.05
BATCH_RETURNS_WITHIN_S = 30.0


@dataclass
class RecordingProducer:
    sent: list[dict[str, Any]] = field(default_factory=list)

    def produce(self, topic: str, **record: Any) -> None:
        self.sent.append({"topic": topic, **record})

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def deliver(self) -> None:
        for record in self.sent:
            if callback := record.pop("on_delivery", None):
                callback(None, None)

    def to(self, topic: str) -> list[dict[str, Any]]:
        return [record for record in self.sent if record["topic"] == topic]

    def replies(self) -> dict[str, ReplyStatus]:
        decoded = (REPLY_CODEC.decode(record["value"]) for record in self.to("results"))
        return {reply.correlation_id: reply.status for reply in decoded}


@dataclass
class RecordingCache:
    """The caption cache's writer: what the worker would publish to the cache topic."""

    submitted: list[Captioned] = field(default_factory=list)

    def submit(self, captioned: Captioned) -> None:
        self.submitted.append(captioned)


class StandInModel:
    name = "stand-in"

    def caption(self, pixels: list[torch.Tensor], **_limits: Any) -> list[str]:
        return ["a caption"] * len(pixels)


@dataclass
class Batch:
    worker: InferenceWorker
    outcomes: OutcomePublisher
    producer: RecordingProducer
    cache: RecordingCache
    tracker: OffsetTracker

    def run(self, jobs: list[Job]) -> None:
        """The worker's batch step on its own thread, so that a step that never returns fails the test."""
        for job in jobs:
            job.generation = self.tracker.track(job.topic, job.partition, job.offset)
        done = threading.Event()

        def step() -> None:
            self.worker._run_batch(StandInModel(), jobs, self.outcomes)  # type: ignore[arg-type]
            done.set()

        threading.Thread(target=step, daemon=True).start()
        wait_until(
            done.is_set, timeout_s=BATCH_RETURNS_WITHIN_S, message="the batch waited on an image unbounded"
        )
        self.producer.deliver()


@pytest.fixture
def batch() -> Batch:
    producer, cache, tracker = RecordingProducer(), RecordingCache(), OffsetTracker()
    outcomes = OutcomePublisher(
        sink=DirectSink(producer),  # type: ignore[arg-type]
        tracker=tracker,
        topics=TOPICS,
        model_name="stand-in",
        worker_id="w-1",
        group_id="g",
        cache=cache,  # type: ignore[arg-type]
    )
    worker = InferenceWorker(
        settings=WorkerSettings(worker_id="w-1", decode_timeout_s=BOUND_S),
        kafka=KafkaSettings(),
        topics=TOPICS,
        images=ImageSettings(),
    )
    return Batch(worker, outcomes, producer, cache, tracker)


@pytest.fixture
def unfinished() -> Iterator[list[Future[torch.Tensor]]]:
    """Futures a test leaves pending or running; finished afterwards, so that no thread stays blocked."""
    futures: list[Future[torch.Tensor]] = []
    yield futures
    for future in futures:
        if not future.done():
            future.set_result(torch.zeros(3, 2, 2))


def make_job(offset: int, pixels: Future[torch.Tensor], *, deadline_in_s: float = 30.0) -> Job:
    now = datetime.now(UTC)
    request = CaptionRequest(
        correlation_id=uuid.uuid4().hex,
        image=b"image bytes",
        content_type="image/png",
        reply_topic="results",
        reply_partition=0,
        deadline=now + timedelta(seconds=deadline_in_s),
        created_at=now,
    )
    job = Job(TOPICS.requests, 0, offset, b"k", REQUEST_CODEC.encode(request), {}, 1234, request=request)
    job.reply_to = ReplyAddress("results", 0, request.correlation_id)
    job.pixels = pixels
    return job


def decoded() -> Future[torch.Tensor]:
    future: Future[torch.Tensor] = Future()
    future.set_running_or_notify_cancel()
    future.set_result(torch.zeros(3, 2, 2))
    return future


def running(unfinished: list[Future[torch.Tensor]]) -> Future[torch.Tensor]:
    """A decode a pool thread has started and never finishes."""
    future: Future[torch.Tensor] = Future()
    future.set_running_or_notify_cancel()
    unfinished.append(future)
    return future


def test_an_image_still_decoding_after_the_bound_fails_alone_and_the_batch_goes_on(
    batch: Batch, unfinished: list[Future[torch.Tensor]]
) -> None:
    stuck, normal = make_job(1, running(unfinished)), make_job(2, decoded())
    stuck.decode_started = time.monotonic()

    batch.run([stuck, normal])

    [dead] = batch.producer.to(TOPICS.dead_letter)
    assert dict(dead["headers"])[record_headers.DLQ_ERROR_CODE] == b"image_too_costly"
    assert dead["value"] == stuck.value
    assert batch.producer.replies() == {
        stuck.correlation_id: ReplyStatus.FAILED,
        normal.correlation_id: ReplyStatus.SUCCEEDED,
    }
    assert [entry.correlation_id for entry in batch.cache.submitted] == [normal.correlation_id]


def test_a_job_no_decode_thread_took_in_time_is_taken_back_and_retried(
    batch: Batch, unfinished: list[Future[torch.Tensor]]
) -> None:
    waiting: Future[torch.Tensor] = Future()  # queued behind threads held by other images
    unfinished.append(waiting)
    queued, normal = make_job(1, waiting), make_job(2, decoded())

    batch.run([queued, normal])

    assert waiting.cancelled()  # no thread decodes it later for nothing
    [retry] = batch.producer.to(TOPICS.retry_topic(1))
    assert dict(retry["headers"])[record_headers.RETRY_ERROR_CLASS] == b"DecodersBusyError"
    assert not batch.producer.to(TOPICS.dead_letter)
    assert batch.producer.replies() == {
        queued.correlation_id: ReplyStatus.RETRYING,
        normal.correlation_id: ReplyStatus.SUCCEEDED,
    }


def test_a_job_whose_deadline_passes_while_its_image_decodes_is_not_run_nor_cached(
    batch: Batch, unfinished: list[Future[torch.Tensor]]
) -> None:
    slow: Future[torch.Tensor] = Future()
    slow.set_running_or_notify_cancel()
    unfinished.append(slow)
    late = make_job(1, slow, deadline_in_s=0.5)
    assert late.request is not None
    deadline = late.request.deadline

    def finish_after_the_deadline() -> None:
        wait_until(lambda: datetime.now(UTC) > deadline, timeout_s=10, message="the deadline to pass")
        slow.set_result(torch.zeros(3, 2, 2))

    threading.Thread(target=finish_after_the_deadline, daemon=True).start()
    batch.worker = InferenceWorker(  # a bound far longer than the decode
        settings=WorkerSettings(worker_id="w-1", decode_timeout_s=30.0),
        kafka=KafkaSettings(),
        topics=TOPICS,
        images=ImageSettings(),
    )

    normal = make_job(2, decoded())

    batch.run([late, normal])

    # Its caller was answered 504: no reply, no title in the cache; the other job is captioned and cached.
    assert batch.producer.replies() == {normal.correlation_id: ReplyStatus.SUCCEEDED}
    assert [entry.correlation_id for entry in batch.cache.submitted] == [normal.correlation_id]
    assert [(tp.partition, tp.offset) for tp in batch.tracker.take_positions()] == [(0, 3)]  # both finished


def test_a_job_queued_behind_a_pool_that_keeps_finishing_images_is_waited_for(
    batch: Batch, unfinished: list[Future[torch.Tensor]]
) -> None:
    """The pool finishes the first image before the bound, and starts the second only after the bound
    counted from the batch's start: the bound for a thread counts again from each image finished."""
    bound_s = 2.0
    batch.worker = InferenceWorker(
        settings=WorkerSettings(worker_id="w-1", decode_timeout_s=bound_s),
        kafka=KafkaSettings(),
        topics=TOPICS,
        images=ImageSettings(),
    )
    first_pixels = running(unfinished)
    queued_pixels: Future[torch.Tensor] = Future()
    unfinished.append(queued_pixels)
    first, queued = make_job(1, first_pixels), make_job(2, queued_pixels)
    first.decode_started = started = time.monotonic()

    def pool() -> None:
        wait_until(lambda: time.monotonic() >= started + 0.75 * bound_s, timeout_s=10, message="a while")
        first_pixels.set_result(torch.zeros(3, 2, 2))
        wait_until(lambda: time.monotonic() >= started + 1.5 * bound_s, timeout_s=10, message="a while")
        if queued_pixels.set_running_or_notify_cancel():
            queued.decode_started = time.monotonic()
            queued_pixels.set_result(torch.zeros(3, 2, 2))

    threading.Thread(target=pool, daemon=True).start()
    batch.run([first, queued])

    assert not queued_pixels.cancelled()
    assert batch.producer.replies() == {
        first.correlation_id: ReplyStatus.SUCCEEDED,
        queued.correlation_id: ReplyStatus.SUCCEEDED,
    }
