from __future__ import annotations

import dataclasses
import json
import math

import pytest

import bench.__main__ as bench_main
from bench.bf16 import Bf16Result
from bench.breakdown import Breakdown
from bench.ceiling import Ceiling, KernelTime, Machine, cpu_flags
from bench.exactly_once import EXACTLY_ONCE, GuaranteeRun
from bench.gpu_phase import GpuResult
from bench.images import make_image
from bench.inprocess import BatchRun, DecoderCheck
from bench.load import Outcome
from bench.measure import (
    ApiCost,
    CapacityResult,
    CapacityStep,
    IdleResult,
    RepeatResult,
    SaturationResult,
    SteadyResult,
)
from bench.naive import NaiveResult
from bench.queueing import BatchCostModel, greedy_p99_s
from bench.report import EXACTLY_ONCE_KEYS, KERNEL_SHARE_KEYS, SUMMARY_KEYS, BenchResults, print_report
from bench.stats import LatencySummary
from bench.warmup import WarmupResult
from tests.bench.conftest import quick_config
from tests.support.repo import REPO


def _latency(errors: int = 0, slower: float = 1.0) -> LatencySummary:
    """Ten answers 100..1000 ms (times `slower`), and `errors` 504s."""
    outcomes = [
        Outcome(due=0.0, sent=0.0, done=0.1 * slower * (index + 1), status=200) for index in range(10)
    ]
    outcomes += [Outcome(due=0.0, sent=0.0, done=30.0, status=504)] * errors
    return LatencySummary.of(outcomes)


def _kernels(seconds: float = 2.0) -> KernelTime:
    return KernelTime(dtype="float32", batch=8, calls=500, distinct=120, seconds=seconds)


def _step(rate: float, achieved: float, errors: int = 0) -> CapacityStep:
    return CapacityStep(
        rate=rate,
        achieved=achieved,
        latency=_latency(errors),
        client_cpu_share=0.1,
        max_lag_ms=1.0,
        min_pace=0.95,
    )


def test_capacity_is_the_highest_passing_step() -> None:
    steps = [_step(100, 100), _step(200, 199), _step(400, 300), _step(300, 296, errors=1)]
    assert [step.passed for step in steps] == [True, True, False, False]
    assert CapacityResult(steps).capacity_rps == 200
    assert CapacityResult([_step(100, 50)]).capacity_rps == 0


def _results() -> BenchResults:
    image = make_image(320, 240, seed=1)
    return BenchResults(
        config=quick_config(),
        images=[image],
        overhead_image=image,
        capacity_image=image,
        naive=NaiveResult(images=4, seconds=8.0, words_per_title=20.0),
        decoders=DecoderCheck(decoder="fast", identical=True),
        warmup=WarmupResult(round_trips=4000, seconds=9.0, first_ms=3.5, last_ms=1.0),
        idle=IdleResult(
            e2e_ms=[1100.0, 1200.0],
            api_ms=[1090.0, 1190.0],
            inference_ms=[900.0, 950.0],
            reference_ms=[1000.0, 1000.0],
            reference_prep_ms=[50.0, 50.0],
            latency=_latency(),
            words_per_title=20.0,
        ),
        saturation=SaturationResult(
            img_s=2.0,
            concurrency=24,
            answered=96,
            wall_s=50.0,
            latency=_latency(),
            words_per_title=20.0,
            client_cpu_share=0.01,
        ),
        steady=tuple(
            SteadyResult(
                fraction=fraction, rate=2.0 * fraction, duration_s=20.0, latency=latency, max_lag_ms=0.0
            )
            for fraction, latency in (
                (0.3, _latency()),
                (0.65, _latency(errors=1)),
                (0.9, _latency(slower=3)),
            )
        ),
        repeat50=RepeatResult(
            saturation=SaturationResult(
                img_s=3.9,
                concurrency=24,
                answered=200,
                wall_s=20.0,
                latency=_latency(),
                words_per_title=20.0,
                client_cpu_share=0.02,
            ),
            cached=100,
        ),
        capacity=CapacityResult([_step(100, 100), _step(200, 150)]),
        api_cost=ApiCost(
            rate=100.0,
            requests=400,
            answered=399,
            api_cpu_s=1.2,
            floor_cpu_ms_per_request=0.45,
            loop_cpu_s=0.8,
            loop_switches=2400,
        ),
        worker_rss_mb=2000.0,
        worker_uss_mb=[700.0, 750.0],
        ceiling=Ceiling(
            machine=Machine(cpu_model="test CPU", flags=("avx2", "fma"), threads=2, sgemm_gflops=200.0),
            model_gflop_per_img=25.0,
            kernels=_kernels(),
        ),
        batch=BatchRun(batch=8, seconds=2.5),
        wall_s=100.0,
    )


def test_summary_has_exactly_the_keys() -> None:
    summary = _results().summary()
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["ratio"] == pytest.approx(4.0)
    assert summary["service_img_s_repeat50"] == pytest.approx(3.9)
    # end-to-end - worker inference: 200 and 250 ms, p50 225; less 50 ms of in-process decode + preprocess
    assert summary["overhead_p50_ms"] == pytest.approx(175.0)
    assert summary["capacity_rps"] == 100
    assert summary["api_cpu_ms_per_request"] == pytest.approx(3.0)  # 1.2 CPU s over 400 requests
    assert summary["api_floor_cpu_ms_per_request"] == pytest.approx(0.45)
    assert summary["api_loop_cpu_ms_per_request"] == pytest.approx(2.0)  # 0.8 s of it on the loop
    assert summary["api_loop_switches_per_request"] == pytest.approx(6.0)
    assert summary["decoder_identical"] is True
    assert summary["uss_mb_per_worker"] == 750.0  # the larger worker's
    assert summary["cpu_ceiling_img_s"] == pytest.approx(4.0)  # a batch of 8 in 2 s of kernels
    assert summary["sgemm_ceiling_img_s"] == pytest.approx(8.0)  # 200 GFLOP/s / 25 GFLOP an image
    assert summary["ceiling_share"] == pytest.approx(0.5)  # service 2.0 img/s of 4.0
    assert summary["inprocess_batch_img_s"] == pytest.approx(3.2)  # a batch of 8 in 2.5 s, alone
    assert summary["inprocess_ceiling_share"] == pytest.approx(0.8)  # 3.2 of the kernels' 4.0
    assert summary["service_inprocess_share"] == pytest.approx(0.625)  # service 2.0 of 3.2
    assert summary["cpu_flags"] == "avx2 fma"
    assert isinstance(summary["p99_ms_65_ideal"], float) and summary["p99_ms_65_ideal"] > 0
    assert [
        summary[key] for key in ("gpu_service_img_s", "gpu_inprocess_img_s", "gpu_p99_ms", "gpu_name")
    ] == [None] * 4  # no CUDA in this run


def test_several_workers_are_set_against_as_many_processes_alone(capsys: pytest.CaptureFixture[str]) -> None:
    """WORKERS=2: the in-process batch and the ceiling are measured in one process of the workers' thread
    count; the machine holds two of them, so its rates are twice one process's."""
    results = _results()
    ceiling = dataclasses.replace(results.ceiling, processes=2)
    batch = dataclasses.replace(results.batch, processes=2)
    saturation = dataclasses.replace(results.saturation, img_s=5.0)  # two workers beat one process alone
    two_workers = dataclasses.replace(results, ceiling=ceiling, batch=batch, saturation=saturation)

    summary = two_workers.summary()
    print_report(two_workers)

    assert summary["cpu_ceiling_img_s"] == pytest.approx(8.0)  # a batch of 8 in 2 s of kernels, twice
    assert summary["sgemm_ceiling_img_s"] == pytest.approx(16.0)
    assert summary["inprocess_batch_img_s"] == pytest.approx(6.4)
    assert summary["ceiling_share"] == pytest.approx(0.625)  # at most 1, as for one worker
    assert summary["service_inprocess_share"] == pytest.approx(0.781)  # 5.0 of 6.4
    assert summary["inprocess_ceiling_share"] == pytest.approx(0.8)  # a ratio within one process
    report = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the table's wrapped cells, joined
    assert "best time x its 500 calls, x 2 workers" in report  # the ceiling's row
    assert "alone (best of 3), x 2 workers" in report  # the in-process batch's row
    assert "sgemm_gflops / model_gflop_per_img, x 2 workers" in report


def test_several_workers_make_the_ideal_p99_of_one_worker_with_its_share() -> None:
    """Each of two workers takes half the arrivals at half the service's rate."""
    results = _results()
    config = dataclasses.replace(results.config, workers=2)
    saturation = dataclasses.replace(results.saturation, img_s=5.0)
    two_workers = dataclasses.replace(results, config=config, saturation=saturation)
    idle_model_s, outside_model_ms = 0.925, 1150.0 - 925.0  # the medians of the idle requests
    one_worker = BatchCostModel.from_bench(idle_inference_s=idle_model_s, service_img_s=2.5)
    assert one_worker is not None

    ideal_ms = 1000 * greedy_p99_s(one_worker, rate=0.65 * 5.0 / 2, cap=16) + outside_model_ms

    assert two_workers.summary()["p99_ms_65_ideal"] == pytest.approx(ideal_ms, abs=0.1)


def test_a_gpu_run_adds_its_figures() -> None:
    gpu = GpuResult(name="NVIDIA H200", service_img_s=812.34, inprocess_img_s=1203.9, p99_ms=180.26)

    summary = dataclasses.replace(_results(), gpu=gpu).summary()

    assert summary["gpu_name"] == "NVIDIA H200"
    assert summary["gpu_service_img_s"] == pytest.approx(812.3)
    assert summary["gpu_inprocess_img_s"] == pytest.approx(1203.9)
    assert summary["gpu_p99_ms"] == pytest.approx(180.3)


def test_the_saturation_breakdown_says_where_the_time_went(capsys: pytest.CaptureFixture[str]) -> None:
    results = _results()
    breakdown = Breakdown(
        wall_s=20.0,
        answered=200,
        workers=1,
        stage_s={"wait_for_jobs": 2.0, "image_encoder": 6.0, "decoding_steps": 10.0, "image_decode": 4.0},
        cpu_s={"worker": 40.0, "api": 2.0, "broker": 1.0, "client": 0.5},
        batches=16,
        batched_images=200,
    )
    saturation = dataclasses.replace(results.saturation, breakdown=breakdown)

    summary = dataclasses.replace(results, saturation=saturation).summary()
    print_report(dataclasses.replace(results, saturation=saturation))

    assert summary["worker_share_decoding_steps"] == pytest.approx(0.5)
    assert summary["worker_share_image_encoder"] == pytest.approx(0.3)
    assert summary["worker_share_other"] == pytest.approx(0.1)  # 20 s less the 18 s the stages report
    assert summary["worker_share_publish"] == 0.0
    assert summary["worker_mean_batch"] == pytest.approx(12.5)
    assert summary["image_decode_ms_per_img"] == pytest.approx(20.0)
    assert summary["cpu_ms_per_img_worker"] == pytest.approx(200.0)
    assert summary["cpu_ms_per_img_api"] == pytest.approx(10.0)
    assert summary["cpu_ms_per_img_client"] == pytest.approx(2.5)
    out = capsys.readouterr().out
    assert "where the time goes at saturation" in out
    assert "12.5 images a batch" in out


def test_each_model_stage_is_set_against_its_own_kernels(capsys: pytest.CaptureFixture[str]) -> None:
    results = _results()
    kernels = dataclasses.replace(
        results.ceiling.kernels, stage_seconds={"image_encoder": 1.2, "prefill": 0.5, "decoding_steps": 0.3}
    )
    ceiling = dataclasses.replace(results.ceiling, kernels=kernels)
    batch = BatchRun(
        batch=8, seconds=2.5, stage_seconds={"image_encoder": 1.5, "prefill": 0.5, "decoding_steps": 0.5}
    )

    summary = dataclasses.replace(results, ceiling=ceiling, batch=batch).summary()
    print_report(dataclasses.replace(results, ceiling=ceiling, batch=batch))

    assert summary["kernel_share_image_encoder"] == pytest.approx(0.8)
    assert summary["kernel_share_prefill"] == pytest.approx(1.0)
    assert summary["kernel_share_decoding_steps"] == pytest.approx(0.6)
    assert "decoding_steps 60% (500 ms)" in capsys.readouterr().out


def test_without_stage_timings_the_stage_shares_are_null() -> None:
    summary = _results().summary()

    assert [summary[key] for key in KERNEL_SHARE_KEYS] == [None] * 3


def test_without_a_breakdown_or_bf16_their_keys_are_null() -> None:
    summary = _results().summary()

    assert summary["worker_share_decoding_steps"] is None and summary["cpu_ms_per_img_broker"] is None
    assert summary["service_img_s_bf16"] is None and summary["bf16_same_titles"] is None


def test_a_bf16_run_adds_its_figures() -> None:
    results = _results()
    bf16 = Bf16Result(
        ceiling=dataclasses.replace(results.ceiling, kernels=_kernels(seconds=0.5)),
        saturation=dataclasses.replace(results.saturation, img_s=6.0),
        same_titles=9,
        photos=12,
    )

    summary = dataclasses.replace(results, bf16=bf16).summary()

    assert summary["service_img_s_bf16"] == pytest.approx(6.0)
    assert summary["cpu_ceiling_img_s_bf16"] == pytest.approx(16.0)  # a batch of 8 in 0.5 s
    assert summary["ceiling_share_bf16"] == pytest.approx(6.0 / 16.0)
    assert summary["bf16_same_titles"] == 9


def _exactly_once(results: BenchResults) -> GuaranteeRun:
    """The same figures as `results`' own, with exactly once: 1.5 img/s, 120 req/s, 30 ms slower idle."""
    idle = results.idle
    return GuaranteeRun(
        guarantee=EXACTLY_ONCE,
        idle=dataclasses.replace(
            idle,
            e2e_ms=[ms + 30.0 for ms in idle.e2e_ms],
            api_ms=[ms + 30.0 for ms in idle.api_ms],
        ),
        saturation=dataclasses.replace(results.saturation, img_s=1.5),
        capacity=CapacityResult([_step(100, 100), _step(120, 120), _step(200, 150)]),
        api_cost=ApiCost(rate=100.0, requests=400, answered=400, api_cpu_s=1.0),
    )


def test_without_exactly_once_its_keys_are_null_and_no_table_compares(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_report(_results())

    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["service_img_s_eos"] is None and summary["idle_ms_eos"] is None
    assert summary["capacity_rps_eos"] is None and summary["eos_saturation_ratio"] is None
    assert "delivery guarantees side by side" not in out


def test_an_exactly_once_run_adds_its_figures_and_its_ratios_to_at_least_once() -> None:
    results = _results()

    summary = dataclasses.replace(results, exactly_once=_exactly_once(results)).summary()

    assert summary["service_img_s_eos"] == pytest.approx(1.5)
    assert summary["idle_ms_eos"] == pytest.approx(1180.0)  # median of 1130 and 1230 ms
    assert summary["overhead_p50_ms_eos"] == pytest.approx(205.0)  # 30 ms more than at least once's 175
    assert summary["capacity_rps_eos"] == 120
    assert summary["api_cpu_ms_per_request_eos"] == pytest.approx(2.5)  # 1.0 CPU s over 400 requests
    assert summary["eos_saturation_ratio"] == pytest.approx(0.75)  # 1.5 img/s of at least once's 2.0
    assert summary["eos_capacity_ratio"] == pytest.approx(1.2)  # 120 req/s of 100
    # at least once's own keys are the base run's, as without exactly once
    assert (summary["service_img_s"], summary["idle_ms"]) == (2.0, pytest.approx(1150.0))


def test_an_exactly_once_ratio_over_no_capacity_is_null() -> None:
    results = _results()
    no_capacity = dataclasses.replace(results, capacity=CapacityResult([_step(100, 50)]))

    summary = dataclasses.replace(no_capacity, exactly_once=_exactly_once(results)).summary()

    assert summary["capacity_rps"] == 0 and summary["capacity_rps_eos"] == 120
    assert summary["eos_capacity_ratio"] is None


def test_the_report_shows_both_guarantees_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    results = _results()

    print_report(dataclasses.replace(results, exactly_once=_exactly_once(results)))

    out = capsys.readouterr().out
    assert "delivery guarantees side by side" in out
    line = next(line for line in out.splitlines() if "service_img_s" in line and "0.75 x" in line)
    assert "2.000" in line and "1.500" in line
    assert json.loads(out.strip().splitlines()[-1])["eos_saturation_ratio"] == pytest.approx(0.75)


def test_the_exactly_once_keys_are_documented_with_the_others() -> None:
    performance = (REPO / "docs" / "performance.md").read_text()
    usage = bench_main.__doc__ or ""

    for key in EXACTLY_ONCE_KEYS:
        assert f"`{key}`" in performance and key in usage, key


def test_summary_reports_each_load_level_and_the_idle_latency() -> None:
    summary = _results().summary()

    assert summary["idle_ms"] == pytest.approx(1150.0)  # median of the idle run's 1100 and 1200 ms
    assert summary["p99_ms_30"] == pytest.approx(991.0)  # 100..1000 ms: p99 interpolates to 991
    assert summary["p99_ms_65"] == summary["p99_ms"] == pytest.approx(991.0)
    assert summary["p99_ms_90"] == pytest.approx(2973.0)  # three times slower
    assert (summary["p50_ms"], summary["p95_ms"]) == (pytest.approx(550.0), pytest.approx(955.0))


def test_a_missing_load_level_is_null_not_nan() -> None:
    results = _results()
    summary = dataclasses.replace(results, steady=results.steady[:1]).summary()

    assert summary["p99_ms_30"] == pytest.approx(991.0)
    assert summary["p99_ms_65"] is None and summary["p99_ms_90"] is None and summary["p50_ms"] is None


def test_cpu_flags_name_the_matrix_extensions_only() -> None:
    cpuinfo = "model name\t: Some Xeon\nflags\t\t: fpu sse2 avx2 fma avx512f amx_tile amx_bf16 ht\n"
    assert cpu_flags(cpuinfo) == ("Some Xeon", ("avx2", "fma", "avx512f", "amx_tile", "amx_bf16"))
    assert cpu_flags("") == ("unknown CPU", ())


def test_json_is_the_last_stdout_line(capsys: pytest.CaptureFixture[str]) -> None:
    print_report(_results())
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == set(SUMMARY_KEYS)
    assert not any(isinstance(value, float) and math.isnan(value) for value in summary.values())
