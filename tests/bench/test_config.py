from __future__ import annotations

import pytest

from bench.config import FULL, QUICK, load_config
from core.settings import InvalidSettingError
from tests.bench.conftest import Environment


def test_defaults_force_twenty_tokens(environment: Environment) -> None:
    config = load_config()
    assert (config.max_new_tokens, config.min_new_tokens) == (20, 20)
    assert config.phases is FULL
    assert config.workers == 1


def test_quick_and_overrides(environment: Environment) -> None:
    environment(BENCH_QUICK="1", BENCH_MIN_NEW_TOKENS="0", WORKERS="2", CAPTIONER_MAX_BATCH_SIZE="8")
    config = load_config()
    assert config.phases is QUICK
    assert config.min_new_tokens == 0
    assert config.batch_size == 8
    assert config.saturation_concurrency == 24  # 1.5 batches per worker
    assert config.run_dir.name == config.run_id


def test_closed_loop_is_sized_for_the_base_models_cpu_batch(environment: Environment) -> None:
    assert load_config().batch_size == 16
    environment(BENCH_BATCH_SIZE="40")
    assert load_config().saturation_concurrency == 60


@pytest.mark.parametrize(
    "variables",
    [
        {"BENCH_QUICK": "maybe"},
        {"BENCH_BATCH_SIZE": "0"},
        {"WORKERS": "two"},
        {"CAPTIONER_MAX_NEW_TOKENS": "0"},
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(
    environment: Environment, variables: dict[str, str]
) -> None:
    environment(**variables)
    with pytest.raises(InvalidSettingError) as refused:
        load_config()
    assert next(iter(variables)) in refused.value.message


def test_latency_is_measured_at_three_load_levels_in_both_sizes() -> None:
    assert FULL.steady_fractions == QUICK.steady_fractions == (0.3, 0.65, 0.9)
    assert QUICK.steady_s < FULL.steady_s and QUICK.steady_max_s < FULL.steady_max_s
