"""The inference loop's batching: an idle worker answers at once, a busy one waits to fill its batch, and a
batch grows only as far as the model's time per job allows."""

from __future__ import annotations

import queue

import pytest

from inference_consumer.batching import BatchCollector, BatchPolicy


class ScriptedQueue(queue.Queue[int]):
    """The feeders' queue, with `queued` jobs in it and `arriving` more that come one per wait. It never
    waits: it records how long each get() was willing to wait, then hands over an arriving job or none."""

    def __init__(self, queued: int, *, arriving: int = 0) -> None:
        super().__init__()
        for job in range(queued):
            self.put(job)
        self.arriving = arriving
        self.waits: list[float | None] = []

    def get(self, block: bool = True, timeout: float | None = None) -> int:
        if not block or self.qsize():
            return super().get(block=False)
        self.waits.append(timeout)
        if self.arriving:
            self.arriving -= 1
            return -1
        raise queue.Empty


def collector_over(ready: ScriptedQueue, **policy: float) -> BatchCollector[int]:
    return BatchCollector(ready, make_policy(**{"max_size": 4, "budget_s": 0, **policy}))


def test_idle_worker_takes_a_lone_job_without_waiting() -> None:
    ready = ScriptedQueue(1, arriving=1)
    collector = collector_over(ready, wait_s=5.0)

    assert collector.next_batch() == [0]
    assert ready.waits == []


def test_an_empty_queue_waits_only_the_first_wait() -> None:
    ready = ScriptedQueue(0)

    assert collector_over(ready).next_batch(first_wait_s=0.1) == []
    assert ready.waits == [0.1]


def test_batch_takes_what_is_queued_up_to_the_size_limit() -> None:
    ready = ScriptedQueue(6)

    assert collector_over(ready, wait_s=0).next_batch() == [0, 1, 2, 3]
    assert ready.qsize() == 2


def test_busy_worker_waits_for_jobs_still_on_their_way() -> None:
    policy = make_policy(max_size=4, budget_s=0, wait_s=0.6)
    collector = BatchCollector(ScriptedQueue(2), policy)
    assert len(collector.next_batch()) == 2  # a batch of two: the worker is busy now
    ready = ScriptedQueue(1, arriving=1)

    batch = BatchCollector(ready, policy).next_batch()

    assert batch == [0, -1]
    assert ready.waits and all(wait is not None and 0 < wait <= 0.6 for wait in ready.waits)


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
    ready = ScriptedQueue(1, arriving=1)
    policy = make_policy(max_size=4, budget_s=0, wait_s=5.0)
    policy.took(2)

    assert BatchCollector(ready, policy).drain() == [0]
    assert ready.waits == []


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


def test_collector_batches_to_the_policys_limit() -> None:
    policy = make_policy(max_size=8, budget_s=1.0, wait_s=0)
    policy.captioned(4, 1.0)  # 250 ms a job: 4 fit in the budget
    ready = ScriptedQueue(8)

    assert len(BatchCollector(ready, policy).next_batch()) == 4
    assert policy.last_size == 4
