"""The benchmarks read their knobs and the service's settings from the environment (load_settings): a test
gives them exactly the variables it names."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from bench.config import QUICK, BenchConfig
from bench.models import REPO

Environment = Callable[..., None]
# The benchmarks' own variables, and the service's they read.
READ_BY_THE_BENCH = ("BENCH_", "CHAOS_", "CAPTIONER_", "KAFKA_CLUSTER_BASE_PORT", "WORKERS")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Environment:
    """Clears every variable the benchmarks read; the returned function sets some."""
    for name in list(os.environ):
        if name.startswith(READ_BY_THE_BENCH):
            monkeypatch.delenv(name)

    def set_variables(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_variables


def quick_config() -> BenchConfig:
    """A quick run's configuration as load_config gives it with BENCH_QUICK=1 alone, whatever the
    environment of the test holds."""
    return BenchConfig(
        quick=True,
        phases=QUICK,
        max_new_tokens=20,
        min_new_tokens=20,
        workers=1,
        worker_threads=os.cpu_count() or 1,
        capacity_worker_threads=1,
        batch_size=16,
        run_id="bench-test",
        run_dir=REPO / ".local" / "bench" / "bench-test",
    )
