"""The step-up and bisection of measure_capacity, against a fake client whose service sustains 450/s."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest

from bench.config import FULL, QUICK, Phases
from bench.images import make_image
from bench.load import LoadClient, LoadRun, LoadSpec, OpenLoop, Outcome
from bench.measure import measure_capacity
from bench.service import Service

LIMIT = 450.0


class FakeService:
    predictions_url = "http://127.0.0.1:1/api/v1/predictions"

    def check_alive(self) -> None:
        pass


class FakeClient:
    def __init__(self) -> None:
        self.rates: list[float] = []

    def run(
        self,
        spec: LoadSpec,
        *,
        on_measuring: Callable[[], None] = lambda: None,
        on_measured: Callable[[], None] = lambda: None,
    ) -> LoadRun:
        assert isinstance(spec, OpenLoop)
        on_measuring()
        on_measured()
        self.rates.append(spec.rate)
        count = round(spec.rate * spec.duration_s)
        served = min(spec.rate, LIMIT)  # past the limit, answers stretch out
        outcomes = [
            Outcome(due=index / spec.rate, sent=index / spec.rate, done=index / served + 0.01, status=200)
            for index in range(count)
        ]
        return LoadRun(
            outcomes=outcomes, started=0.0, finished=count / served, client_cpu_s=0.1, max_lag_ms=0.0
        )


def _measure(phases: Phases) -> tuple[float, list[float]]:
    client = FakeClient()
    result = measure_capacity(
        cast(LoadClient, client),
        cast(Service, FakeService()),
        make_image(320, 240, seed=0),
        phases=phases,
    )
    return result.capacity_rps, client.rates


@pytest.fixture(autouse=True)
def no_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.measure.time.sleep", lambda _seconds: None)


def test_full_steps_up_then_bisects() -> None:
    capacity, rates = _measure(FULL)
    assert rates[:7] == [50, 50, 100, 200, 300, 400, 500]  # warm-up, then steps until 500 fails
    assert rates[7:] == [450, 480]  # bisection: 450 passes, 480 fails
    assert capacity == 450


def test_quick_stops_at_the_first_failure() -> None:
    capacity, rates = _measure(QUICK)
    assert rates == [50, 50, 100, 200, 400, 600]
    assert capacity == 400
