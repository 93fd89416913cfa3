"""The inference loop's batching: an idle worker answers at once, a worker whose arrivals need bigger
batches waits to fill them, one at moderate load runs the smallest batches that keep up, and a batch grows
only as far as the model's time per job allows."""

from __future__ import annotations

import math
import queue

import pytest

from inference_consumer.batching import ArrivalRate, BatchCollector, BatchCost, BatchPolicy


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


class FakeClock:
    """Time as the test sets it; it stands still while a batch is collected."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frozen_clock() -> float:
    return 0.0


def collector_over(ready: ScriptedQueue, **policy: float) -> BatchCollector[int]:
    return BatchCollector(ready, make_policy(**{"max_size": 4, "budget_s": 0, **policy}), frozen_clock)


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
    clock = arrive(policy, per_s=2.0, seconds=200)  # more than batches of one can serve (1 s each, below)
    run_batches(policy, fixed_s=0.8, per_job_s=0.2, sizes=(1, 2, 3, 4))
    ready = ScriptedQueue(1, arriving=1)

    batch = BatchCollector(ready, policy, clock).next_batch()

    assert batch == [0, -1]
    assert ready.waits and all(wait is not None and 0 < wait <= 0.6 + 1e-9 for wait in ready.waits)


@pytest.mark.parametrize(
    ("last_inference_s", "expected_s"),
    [(0.01, 0.02), (6.0, 0.3)],  # fast model: batch_wait_ms; slow one: 5% of its last batch
)
def test_fill_wait_grows_with_the_models_batch_time(last_inference_s: float, expected_s: float) -> None:
    policy = make_policy(wait_s=0.02, wait_share=0.05)
    policy.captioned(2, last_inference_s)

    assert policy.fill_wait_s() == pytest.approx(expected_s)


def test_draining_does_not_wait() -> None:
    ready = ScriptedQueue(1, arriving=1)
    policy = make_policy(max_size=4, budget_s=0, wait_s=5.0)
    arrive(policy, per_s=50.0, seconds=100)

    assert BatchCollector(ready, policy, frozen_clock).drain() == [0]
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

    assert len(BatchCollector(ready, policy, frozen_clock).next_batch()) == 4
    assert policy.last_size == 4


# ---- latency-aware sizing: the smallest batch that keeps up with arrivals --------------------------------


def arrive(policy: BatchPolicy, *, per_s: float, seconds: float) -> FakeClock:
    """Jobs arriving at `per_s` and taken one at a time as they come, over `seconds`; the clock stops at
    the last of them."""
    clock = FakeClock()
    for index in range(round(per_s * seconds)):
        clock.now = index / per_s
        policy.took(1, queued=0, now=clock.now)
    return clock


def run_batches(policy: BatchPolicy, *, fixed_s: float, per_job_s: float, sizes: tuple[int, ...]) -> None:
    for size in sizes:
        policy.captioned(size, fixed_s + per_job_s * size)


# GIT-base-like on CPU: the per-image encoder dominates; a GPU-like model: the fixed per-batch cost does.
CPU_LIKE = {"fixed_s": 0.05, "per_job_s": 0.4}
GPU_LIKE = {"fixed_s": 1.0, "per_job_s": 0.25}
MIXED_SIZES = (1, 2, 4, 8, 3, 1, 2, 16)  # the last batch was large


def test_at_a_low_arrival_rate_a_per_image_model_runs_small_batches_without_waiting() -> None:
    policy = make_policy(wait_s=0.5)
    clock = arrive(policy, per_s=0.5, seconds=300)  # 20 % of what the model can serve
    run_batches(policy, **CPU_LIKE, sizes=MIXED_SIZES)
    ready = ScriptedQueue(1, arriving=8)

    batch = BatchCollector(ready, policy, clock).next_batch()

    assert policy.keep_up_size() <= 2
    assert batch == [0]
    assert ready.waits == []  # the lone job does not wait for company it does not need


def test_near_capacity_a_fixed_cost_model_builds_large_batches() -> None:
    policy = make_policy(max_size=64, budget_s=6.0, wait_s=0.5)
    clock = arrive(
        policy, per_s=2.8, seconds=300
    )  # batches of 16 serve 3.2/s, the most this model can is 4/s
    run_batches(policy, **GPU_LIKE, sizes=MIXED_SIZES)
    ready = ScriptedQueue(2, arriving=40)

    batch = BatchCollector(ready, policy, clock).next_batch()

    assert policy.limit() == 19  # 16 jobs in 5 s: 19 fit in the 6 s budget
    assert policy.keep_up_size() == 19
    assert len(batch) == 19


def test_a_moderate_rate_sizes_between_one_and_the_cap() -> None:
    policy = make_policy(max_size=64, budget_s=6.0)
    arrive(policy, per_s=1.5, seconds=300)
    run_batches(policy, **GPU_LIKE, sizes=MIXED_SIZES)

    # 1.2 x 1.5/s = 1.8/s: b / (1 + 0.25 b) >= 1.8 from b = 3.27
    assert policy.keep_up_size() == 4


def test_a_backlog_is_drained_up_to_the_cap_even_when_small_batches_would_keep_up() -> None:
    policy = make_policy(max_size=64, budget_s=6.0)
    clock = arrive(policy, per_s=0.5, seconds=300)
    run_batches(policy, **CPU_LIKE, sizes=MIXED_SIZES)
    ready = ScriptedQueue(30)

    batch = BatchCollector(ready, policy, clock).next_batch()

    assert policy.keep_up_size() == 1
    assert len(batch) == policy.limit() == 14  # 6.45 s for 16: 14 fit in 6 s
    assert ready.qsize() == 16


def test_one_outlier_batch_does_not_move_the_sizes() -> None:
    policy = make_policy(max_size=64, budget_s=0)
    arrive(policy, per_s=1.5, seconds=300)
    run_batches(policy, **GPU_LIKE, sizes=MIXED_SIZES * 3)
    before = policy.keep_up_size()

    policy.captioned(4, 120.0)  # a stall: two minutes for a batch of four

    assert policy.keep_up_size() == before == 4
    fixed_s, per_job_s = policy.cost.parts() or (math.nan, math.nan)
    assert fixed_s == pytest.approx(1.0, abs=0.05)
    assert per_job_s == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("size", [1, 8, 64, 0, -3])
def test_hostile_timings_are_ignored(size: int, seconds: float) -> None:
    policy = make_policy(max_size=64, budget_s=6.0)
    arrive(policy, per_s=1.5, seconds=100)
    run_batches(policy, **GPU_LIKE, sizes=MIXED_SIZES)
    limit, keep_up = policy.limit(), policy.keep_up_size()

    policy.captioned(size, seconds)

    assert (policy.limit(), policy.keep_up_size()) == (limit, keep_up)


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
def test_sizes_stay_within_one_and_the_maximum_whatever_the_timings(seconds: float) -> None:
    policy = make_policy(max_size=8, budget_s=6.0)
    for size in (1, 1, 8, 8, 0):
        policy.captioned(size, seconds)
    for now in (0.0, 0.0, -5.0, math.nan, 1.0, math.inf, 2.0):
        policy.took(3, queued=-2, now=now)

    assert 1 <= policy.keep_up_size() <= policy.limit() <= 8
    assert math.isfinite(policy.arrivals.per_s) and policy.arrivals.per_s >= 0


def test_sizes_stay_within_one_and_the_maximum_at_extreme_rates() -> None:
    policy = make_policy(max_size=8, budget_s=0)
    run_batches(policy, fixed_s=0.0, per_job_s=1e-9, sizes=(1, 2))
    policy.arrivals.per_s = 1e300
    assert policy.keep_up_size() == 8
    policy.arrivals.per_s = 1e-300
    assert policy.keep_up_size() == 1


def test_batch_cost_fits_fixed_and_per_job_parts() -> None:
    cost = BatchCost()
    for size in (1, 2, 4, 8, 16, 3):
        cost.observe(size, 0.5 + 0.1 * size)

    fixed_s, per_job_s = cost.parts() or (math.nan, math.nan)

    assert fixed_s == pytest.approx(0.5)
    assert per_job_s == pytest.approx(0.1)


def test_batches_of_one_size_only_assume_no_gain_from_batching() -> None:
    cost = BatchCost()
    for _ in range(3):
        cost.observe(16, 8.0)

    assert cost.parts() == (0.0, 0.5)
    assert BatchCost().parts() is None


def test_arrival_rate_counts_jobs_taken_and_the_queue_growing() -> None:
    rate = ArrivalRate(time_constant_s=5.0)
    for second in range(100):  # 3 jobs a second arrive, 2 are taken, the queue grows by 1
        rate.observe(float(second), taken=2, queued=second)

    assert rate.per_s == pytest.approx(3.0, rel=0.01)
    for second in range(100, 200):  # idle: empty looks
        rate.observe(float(second), taken=0, queued=99)

    assert rate.per_s < 0.01
