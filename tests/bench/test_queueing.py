"""The ideal batching worker of bench/queueing.py: checked against queueing theory where it has an answer."""

from __future__ import annotations

import statistics

import pytest

from bench.queueing import BatchCostModel, greedy_latencies_s, greedy_p99_s


def test_the_cost_comes_from_the_idle_model_time_and_the_saturation_rate() -> None:
    cost = BatchCostModel.from_bench(idle_inference_s=0.8, service_img_s=2.5)

    assert cost == BatchCostModel(fixed_s=pytest.approx(0.4), per_image_s=pytest.approx(0.4))
    assert cost is not None and cost.seconds(4) == pytest.approx(2.0)


@pytest.mark.parametrize(("idle_s", "rate"), [(0.3, 2.5), (0.8, 0.0), (0.0, 2.5)])
def test_figures_that_make_no_cost_give_none(idle_s: float, rate: float) -> None:
    assert BatchCostModel.from_bench(idle_inference_s=idle_s, service_img_s=rate) is None


def test_without_batching_it_is_an_m_d_1_queue() -> None:
    """Pollaczek-Khinchine, deterministic service s at utilisation rho: mean wait rho * s / (2 (1 - rho))."""
    service_s, rate = 0.5, 1.2  # rho = 0.6
    latencies = greedy_latencies_s(BatchCostModel(0.0, service_s), rate=rate, cap=1)

    rho = rate * service_s
    assert statistics.fmean(latencies) == pytest.approx(
        service_s + rho * service_s / (2 * (1 - rho)), rel=0.03
    )


def test_a_lone_request_at_a_trickle_costs_one_batch_of_one() -> None:
    cost = BatchCostModel(0.4, 0.4)

    assert greedy_p99_s(cost, rate=0.001, cap=16) == pytest.approx(0.8)


def test_batching_keeps_up_where_one_at_a_time_cannot() -> None:
    cost = BatchCostModel(0.4, 0.4)  # one at a time: at most 1.25/s; in batches of 16: 2.35/s

    batched = greedy_latencies_s(cost, rate=1.6, cap=16, requests=20_000)
    alone = greedy_latencies_s(cost, rate=1.6, cap=1, requests=20_000)

    assert max(batched) < 10 < max(alone)  # the unbatched queue grows without bound
