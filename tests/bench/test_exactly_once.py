"""The exactly-once comparison: each variant's service settings, the run that skips it, its printed line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.__main__ import exactly_once_base_phase, exactly_once_capacity_phase
from bench.config import load_config
from bench.exactly_once import AT_LEAST_ONCE, EXACTLY_ONCE, with_guarantee
from bench.service import ServiceSpec, service_env
from tests.bench.conftest import Environment, quick_config
from tests.bench.test_report import _exactly_once, _results


def _spec() -> ServiceSpec:
    return ServiceSpec(
        label="base",
        model_dir=Path("/models/base"),
        workers=1,
        worker_threads=2,
        max_new_tokens=20,
        min_new_tokens=20,
    )


@pytest.mark.parametrize("guarantee", [EXACTLY_ONCE, AT_LEAST_ONCE])
def test_each_variant_runs_its_guarantee_whatever_the_environment_sets(
    environment: Environment, guarantee: str
) -> None:
    other = AT_LEAST_ONCE if guarantee == EXACTLY_ONCE else EXACTLY_ONCE
    environment(CAPTIONER_DELIVERY_GUARANTEE=other)

    env = service_env(with_guarantee(_spec(), guarantee), bootstrap="127.0.0.1:9092", run_id="run", port=8000)

    assert env["CAPTIONER_DELIVERY_GUARANTEE"] == guarantee


def test_each_variant_has_topics_and_a_group_of_its_own(environment: Environment) -> None:
    base = service_env(_spec(), bootstrap="127.0.0.1:9092", run_id="run", port=8000)
    eos = service_env(
        with_guarantee(_spec(), EXACTLY_ONCE), bootstrap="127.0.0.1:9092", run_id="run", port=8000
    )

    for variable in ("CAPTIONER_TOPIC_REQUESTS", "CAPTIONER_TOPIC_REPLIES", "CAPTIONER_WORKER_GROUP_ID"):
        assert eos[variable] != base[variable]
    assert with_guarantee(_spec(), EXACTLY_ONCE).model_dir == _spec().model_dir


def test_the_run_knows_when_its_own_services_already_run_exactly_once(environment: Environment) -> None:
    assert load_config().exactly_once is False
    environment(CAPTIONER_DELIVERY_GUARANTEE="exactly_once")
    assert load_config().exactly_once is True


def test_a_run_already_exactly_once_starts_no_second_service_to_compare() -> None:
    """Nothing to compare: neither phase touches the images, the client or the broker (all unusable here)."""
    config = dataclasses.replace(quick_config(), exactly_once=True)
    unusable = object()

    assert exactly_once_base_phase(config, unusable, unusable, "nowhere:0") is None  # type: ignore[arg-type]
    assert exactly_once_capacity_phase(config, unusable, unusable, "nowhere:0") is None  # type: ignore[arg-type]


def test_the_phase_line_gives_each_figure_under_both_guarantees() -> None:
    results = _results()
    assert results.guarantees is None
    comparison = dataclasses.replace(results, exactly_once=_exactly_once(results)).guarantees
    assert comparison is not None

    line = comparison.describe()

    assert "service_img_s 2.000 / 1.500 (0.75 x)" in line
    assert "idle_ms 1150 / 1180 (+30.0 ms)" in line
    assert "overhead_p50_ms 175.0 / 205.0 (+30.0 ms)" in line
    assert "capacity_rps 100 / 120 (1.20 x)" in line
    assert "api_cpu_ms_per_request 3.00 / 2.50 (-0.50 ms)" in line
