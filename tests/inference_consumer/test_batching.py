"""The inference loop's batching: an idle worker answers at once, a busy one waits to fill its batch."""

from __future__ import annotations

import queue
import threading
import time
from typing import cast

import pytest

from captioner.settings import KafkaSettings, TopicSettings, WorkerSettings
from inference_consumer.jobs import Job
from inference_consumer.worker import InferenceWorker


def make_worker(**settings: float) -> InferenceWorker:
    return InferenceWorker(
        settings=WorkerSettings.model_validate({"max_batch_size": 4, **settings}),
        kafka=KafkaSettings(),
        topics=TopicSettings(),
    )


def fake_jobs(count: int) -> list[Job]:
    return [cast(Job, object()) for _ in range(count)]


def queued(jobs: list[Job]) -> queue.Queue[Job]:
    ready: queue.Queue[Job] = queue.Queue()
    for job in jobs:
        ready.put(job)
    return ready


def test_idle_worker_takes_a_lone_job_without_waiting() -> None:
    worker = make_worker(batch_wait_ms=5000)
    started = time.monotonic()

    batch = worker._next_batch(queued(fake_jobs(1)))

    assert len(batch) == 1
    assert time.monotonic() - started < 1.0


def test_batch_takes_what_is_queued_up_to_the_size_limit() -> None:
    worker = make_worker(batch_wait_ms=0)

    assert len(worker._next_batch(queued(fake_jobs(6)))) == 4


def test_busy_worker_waits_for_jobs_still_on_their_way() -> None:
    worker = make_worker(batch_wait_ms=600)
    ready = queued(fake_jobs(2))
    worker._next_batch(ready)  # a batch of two: the worker is busy now
    ready.put(fake_jobs(1)[0])
    late = threading.Timer(0.2, ready.put, args=(fake_jobs(1)[0],))
    late.start()

    batch = worker._next_batch(ready)

    late.join()
    assert len(batch) == 2


@pytest.mark.parametrize(
    ("last_inference_s", "expected_s"),
    [(0.01, 0.02), (6.0, 0.3)],  # fast model: batch_wait_ms; slow one: 5% of its last batch
)
def test_busy_wait_grows_with_the_models_batch_time(last_inference_s: float, expected_s: float) -> None:
    worker = make_worker(batch_wait_ms=20, batch_wait_share=0.05)
    worker._last_batch_size, worker._last_inference_s = 2, last_inference_s

    assert worker._batch_wait_s() == pytest.approx(expected_s)


def test_draining_does_not_wait() -> None:
    worker = make_worker(batch_wait_ms=5000)
    worker._last_batch_size = 2
    started = time.monotonic()

    assert len(worker._next_batch(queued(fake_jobs(1)), first_wait_s=0, fill=False)) == 1
    assert time.monotonic() - started < 1.0
