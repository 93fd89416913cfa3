from __future__ import annotations

import math

import pytest

from bench.load import Outcome, arrival_offsets
from bench.stats import LatencySummary, completion_rate, percentile


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_completion_rate_counts_whole_bursts_after_the_first() -> None:
    # Batches of 4 answered at t=1 (warm-up), 3 and 5: 8 answers in 4 s after the first burst.
    bursts = [t + offset for t in (1.0, 3.0, 5.0) for offset in (0.0, 0.001, 0.002, 0.003)]
    assert completion_rate(bursts) == pytest.approx(8 / (5.003 - 1.003))


def test_completion_rate_of_a_stream() -> None:
    assert completion_rate([index * 0.01 for index in range(101)]) == pytest.approx(100.0)


def test_latency_summary_counts_errors_by_status() -> None:
    outcomes = [
        Outcome(due=0.0, sent=0.0, done=0.1, status=200),
        Outcome(due=0.0, sent=0.0, done=0.3, status=200),
        Outcome(due=0.0, sent=0.0, done=30.0, status=504),
        Outcome(due=0.0, sent=0.0, done=1.0, status=0),
    ]
    summary = LatencySummary.of(outcomes)
    assert summary.errors == 2
    assert summary.p50_ms == pytest.approx(200.0)
    assert summary.errors_text == "2 (no answer x1, 504 x1)"


def test_arrivals() -> None:
    uniform = arrival_offsets(100, 2.0, poisson=False, seed=0)
    assert len(uniform) == 200 and uniform[1] == pytest.approx(0.01)
    poisson = arrival_offsets(100, 20.0, poisson=True, seed=1)
    assert 1800 < len(poisson) < 2200
    assert all(0 <= offset < 20.0 for offset in poisson)
    assert poisson == sorted(poisson)
