"""The inference loop's batching: an idle worker answers at once, a busy one waits to fill its batch, and a
batch grows only as far as the model's time per job allows."""

from __future__ import annotations

import queue
import threading
import time
from typing import cast

import pytest

from core.settings import ImageSettings, KafkaSettings, TopicSettings, WorkerSettings
from inference_consumer.batching import BatchPolicy
from inference_consumer.jobs import Job
from inference_consumer.worker import InferenceWorker


def make_worker(**settings: float) -> InferenceWorker:
    return InferenceWorker(
        settings=WorkerSettings.model_validate({"max_batch_size": 4, "batch_budget_ms": 0, **settings}),
        kafka=KafkaSettings(),
        topics=TopicSettings(),
        images=ImageSettings(),
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
    policy = make_policy(wait_s=0.02, wait_share=0.05)
    policy.took(2)
    policy.captioned(2, last_inference_s)

    assert policy.fill_wait_s() == pytest.approx(expected_s)


def test_draining_does_not_wait() -> None:
    worker = make_worker(batch_wait_ms=5000)
    worker._batching.took(2)
    started = time.monotonic()

    assert len(worker._next_batch(queued(fake_jobs(1)), first_wait_s=0, fill=False)) == 1
    assert time.monotonic() - started < 1.0


def make_policy(**overrides: float) -> BatchPolicy:
    settings: dict[str, float] = {"max_size": 64, "budget_s": 6.0, "wait_s": 0.02, "wait_share": 0.05}
    settings.update(overrides)
    return BatchPolicy(
        max_size=int(settings["max_size"]),
        budget_s=settings["budget_s"],
        wait_s=settings["wait_s"],
        wait_share=settings["wait_share"],
    )


def test_batch_size_is_the_maximum_until_a_batch_has_run() -> None:
    policy = make_policy()

    assert policy.limit() == 64
    assert policy.backlog() == 128


@pytest.mark.parametrize(
    ("size", "inference_s", "expected"),
    [
        (16, 5.6, 17),  # GIT-base on 2 CPU cores: 350 ms a job, 17 fit in 6 s
        (1, 0.8, 7),  # ... after a lone job on an idle worker: its whole cost counts against one job
        (12, 0.009, 64),  # the tiny model: per-job cost is small, so the maximum rules
        (1, 30.0, 1),  # slower than the whole budget: still one job at a time
    ],
)
def test_batch_grows_only_as_far_as_the_budget_allows(size: int, inference_s: float, expected: int) -> None:
    policy = make_policy()
    policy.captioned(size, inference_s)

    assert policy.limit() == expected
    assert policy.backlog() == 2 * expected


def test_a_lone_job_after_a_busy_spell_does_not_shrink_the_next_batch() -> None:
    policy = make_policy()
    policy.captioned(16, 5.6)
    policy.captioned(1, 0.8)  # idle again

    assert policy.limit() == 17
    policy.captioned(17, 8.5)  # the machine got slower: a batch at the limit renews the time per job
    assert policy.limit() == 12
    policy.captioned(12, 3.6)  # ... and faster again: a full batch of the smaller limit renews it too
    assert policy.limit() == 20


def test_no_budget_means_the_maximum() -> None:
    policy = make_policy(budget_s=0)
    policy.captioned(1, 30.0)

    assert policy.limit() == 64


def test_worker_batches_to_the_policys_limit() -> None:
    worker = make_worker(max_batch_size=8, batch_budget_ms=1000, batch_wait_ms=0)
    worker._batching.captioned(4, 1.0)  # 250 ms a job: 4 fit in the budget

    assert len(worker._next_batch(queued(fake_jobs(8)))) == 4
