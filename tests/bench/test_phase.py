"""bench.phase: which phases it runs alone, and how many times."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.breakdown import Breakdown
from bench.ceiling import Ceiling, KernelTime, Machine
from bench.inprocess import BatchRun, InProcessRun
from bench.phase import PHASES, in_process_line, parse_args, where_the_time_went
from tests.bench.conftest import quick_config


@pytest.mark.parametrize(
    ("phase", "function"),
    [
        ("saturation", "saturation"),
        ("capacity", "capacity"),
        ("api-cost", "api_cost"),
        ("memory", "memory"),
        ("exactly-once", "exactly_once"),
        ("in-process", "in_process"),
    ],
)
def test_each_named_phase_can_run_alone(phase: str, function: str) -> None:
    args = parse_args([phase, "--repeat", "3"])

    assert PHASES[args.phase].__name__ == function and args.repeat == 3


@pytest.mark.parametrize(
    "argv", [["idle"], ["capacity", "--repeat", "0"], ["capacity", "--repeat", "11"], []]
)
def test_other_phases_and_repeats_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)

    assert exit_.value.code == 2


def test_the_saturation_line_says_where_the_workers_time_and_the_cpu_went() -> None:
    breakdown = Breakdown(
        wall_s=10.0,
        answered=20,
        workers=1,
        stage_s={"image_encoder": 5.0, "prefill": 3.0, "decoding_steps": 1.5, "image_decode": 0.6},
        cpu_s={"worker": 19.0, "api": 0.1, "broker": 0.5, "client": 0.02},
        batches=2,
        batched_images=20,
    )

    line = where_the_time_went(breakdown)

    assert "image_encoder 0.500 prefill 0.300 decoding_steps 0.150 other 0.050" in line
    assert "generate" not in line  # the fast decoder reports no hf generate stage
    assert "worker_mean_batch 10.0" in line
    assert "image_decode 30.0" in line
    assert "worker 950.0 api 5.0 broker 25.0 client 1.0" in line


def test_the_in_process_line_sets_each_stage_against_its_kernels() -> None:
    kernels = KernelTime(
        dtype="float32",
        batch=8,
        calls=500,
        distinct=120,
        seconds=2.0,
        stage_seconds={"image_encoder": 1.2, "prefill": 0.5, "decoding_steps": 0.3},
    )
    machine = Machine(cpu_model="test CPU", flags=("avx2",), threads=2, sgemm_gflops=200.0)
    ceiling = Ceiling(machine=machine, model_gflop_per_img=25.0, kernels=kernels)
    batch = BatchRun(
        batch=8, seconds=2.5, stage_seconds={"image_encoder": 1.5, "prefill": 0.5, "decoding_steps": 0.5}
    )

    line = in_process_line(ceiling, batch)

    assert "cpu_ceiling_img_s 4.00 inprocess_batch_img_s 3.200 inprocess_ceiling_share 0.800" in line
    assert "kernel_share_image_encoder 0.800 (1500 ms)" in line
    assert "kernel_share_decoding_steps 0.600 (500 ms)" in line


def test_the_in_process_batch_is_counted_for_the_runs_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """WORKERS=2: batch_phase asks for one process's batch and ceiling, counted for two workers."""
    import bench.__main__ as bench_main

    asked: dict[str, object] = {}
    kernels = KernelTime(dtype="float32", batch=16, calls=10, distinct=5, seconds=8.0)
    machine = Machine(cpu_model="test CPU", flags=("avx2",), threads=1, sgemm_gflops=80.0)

    def measured(*_args: object, **kwargs: object) -> InProcessRun:
        asked.update(kwargs)
        processes = int(kwargs["processes"])  # type: ignore[call-overload]
        return InProcessRun(
            ceiling=Ceiling(machine=machine, model_gflop_per_img=55.0, kernels=kernels, processes=processes),
            batch=BatchRun(batch=16, seconds=10.0, processes=processes),
        )

    monkeypatch.setattr(bench_main, "ensure_model", lambda _name: Path("/nonexistent"))
    monkeypatch.setattr(bench_main, "measure_in_process", measured)
    config = dataclasses.replace(quick_config(), workers=2, worker_threads=1)

    run = bench_main.batch_phase(config, bench_main.ImageSets.make(4))

    assert asked["processes"] == 2 and asked["threads"] == 1
    assert run.batch.img_s == pytest.approx(3.2) and run.ceiling.img_s == pytest.approx(4.0)
