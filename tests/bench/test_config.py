from __future__ import annotations

from bench.config import FULL, QUICK, load_config


def test_defaults_force_twenty_tokens() -> None:
    config = load_config({})
    assert (config.max_new_tokens, config.min_new_tokens) == (20, 20)
    assert config.phases is FULL
    assert config.workers == 1


def test_quick_and_overrides() -> None:
    config = load_config(
        {"BENCH_QUICK": "1", "BENCH_MIN_NEW_TOKENS": "0", "WORKERS": "2", "CAPTIONER_MAX_BATCH_SIZE": "8"}
    )
    assert config.phases is QUICK
    assert config.min_new_tokens == 0
    assert config.batch_size == 8
    assert config.saturation_concurrency == 24  # 1.5 batches per worker
    assert config.run_dir.name == config.run_id


def test_closed_loop_is_sized_for_the_base_models_cpu_batch() -> None:
    assert load_config({}).batch_size == 16
    assert load_config({"BENCH_BATCH_SIZE": "40"}).saturation_concurrency == 60


def test_latency_is_measured_at_three_load_levels_in_both_sizes() -> None:
    assert FULL.steady_fractions == QUICK.steady_fractions == (0.3, 0.65, 0.9)
    assert QUICK.steady_s < FULL.steady_s and QUICK.steady_max_s < FULL.steady_max_s
