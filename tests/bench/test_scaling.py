"""bench.scaling: its pure parts (worker counts, pinning, the CPU description, request shares, answers by
worker, the JSON summary printed last) without a broker; and, against a real broker, two pinned workers of
the bench's service holding 3/3 request partitions and signing their answers."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from bench.config import QUICK
from bench.images import make_image
from bench.load import LoadClient, LoadRun, LoadSpec, OpenLoop, Outcome, Sequential, answered, load_client
from bench.measure import CapacityResult, CapacityStep, measure_capacity, target
from bench.scaling import (
    CpuInfo,
    GroupReader,
    ScalingConfig,
    ScalingPoint,
    ScalingResults,
    answers_in_order,
    fair,
    load_scaling_config,
    parse_worker_counts,
    pinned_cpus,
    print_scaling_report,
    request_client_id,
    shares_by_worker,
)
from bench.service import Service, ServiceSpec, running_service
from bench.stats import LatencySummary
from tests.bench.conftest import Environment, quick_config
from tests.support.processes import HARNESS_WORKER

CPUINFO = """processor\t: 0
model name\t: Example CPU @ 2.0GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni
processor\t: 1
model name\t: Example CPU @ 2.0GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_worker_counts_parse_in_order_and_reject_nonsense() -> None:
    assert parse_worker_counts("1,2,3") == (1, 2, 3)
    assert parse_worker_counts(" 4, 1 ,") == (4, 1)
    for bad in ("", "0,1", "-1", "two"):
        with pytest.raises(ValueError):
            parse_worker_counts(bad)


def test_the_run_pins_workers_and_measures_one_two_three_unless_told_otherwise(
    environment: Environment,
) -> None:
    default = load_scaling_config()
    assert (default.worker_counts, default.pin) == ((1, 2, 3), True)
    environment(BENCH_SCALING_WORKERS="2", BENCH_SCALING_PIN="0")
    told = load_scaling_config()
    assert (told.worker_counts, told.pin) == ((2,), False)


def test_workers_pin_to_the_usable_cpus_in_turn() -> None:
    assert pinned_cpus(1, [0, 1]) == (0,)
    assert pinned_cpus(3, [0, 1]) == (0, 1, 0)
    assert pinned_cpus(2, [2, 5, 7]) == (2, 5)


def test_pinned_workers_run_under_taskset_and_unpinned_ones_do_not() -> None:
    spec = ServiceSpec(
        label="scale2",
        model_dir=Path("/models/tiny"),
        workers=2,
        worker_threads=1,
        max_new_tokens=20,
        min_new_tokens=20,
        worker_cpus=(0, 1),
    )
    assert spec.worker_command(2) == ["taskset", "-c", "1", *HARNESS_WORKER]
    unpinned = ServiceSpec(
        label="tiny",
        model_dir=Path("/models/tiny"),
        workers=1,
        worker_threads=1,
        max_new_tokens=20,
        min_new_tokens=20,
    )
    assert unpinned.worker_command(1) == list(HARNESS_WORKER)


def test_cpu_info_names_the_model_and_its_vector_extensions() -> None:
    cpu = CpuInfo.parse(CPUINFO)
    assert cpu.model == "Example CPU @ 2.0GHz"
    assert cpu.vector_flags == "avx2 avx512f avx512_bf16 avx512_vnni"
    assert cpu.describe().startswith("Example CPU @ 2.0GHz: AVX-512 yes, AVX2 yes, AMX no")
    assert CpuInfo.parse("").model == "unknown"


def test_shares_follow_the_workers_order_and_a_missing_member_holds_nothing() -> None:
    held = {request_client_id("w2"): 4, request_client_id("w1"): 2, "someone-else": 6}
    assert shares_by_worker(held, ["w1", "w2", "w3"]) == (2, 4, 0)


def test_fair_means_every_partition_held_in_floor_or_ceil_shares() -> None:
    assert fair((6,), 6)
    assert fair((2, 2, 2), 6)
    assert fair((2, 1, 1, 2), 6)
    assert not fair((4, 2, 0), 6)
    assert not fair((3, 2), 6)  # one partition not held yet


def _answer(worker: str) -> bytes:
    return json.dumps({"title": "a b", "latency_ms": 3.0, "inference_ms": 1.0, "worker_id": worker}).encode()


def test_an_answer_says_which_worker_gave_it() -> None:
    outcome = answered(_answer("w7"), due=0.0, sent=0.0, done=1.0)
    assert (outcome.worker_id, outcome.words, outcome.ok) == ("w7", 2, True)
    old_body = json.dumps({"title": "x", "latency_ms": 3.0, "inference_ms": 1.0}).encode()
    assert answered(old_body, due=0.0, sent=0.0, done=1.0).worker_id is None


class TwoWorkers:
    """A fake load client whose service sustains 450/s, answers alternating between w1 and w2 (twice as
    many from w1)."""

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
        count = round(spec.rate * spec.duration_s)
        served = min(spec.rate, 450.0)
        outcomes = [
            Outcome(
                due=index / spec.rate,
                sent=index / spec.rate,
                done=index / served,
                status=200,
                worker_id="w2" if index % 3 == 2 else "w1",
            )
            for index in range(count)
        ]
        return LoadRun(outcomes=outcomes, started=0.0, finished=1.0, client_cpu_s=0.0, max_lag_ms=0.0)


class FakeService:
    predictions_url = "http://127.0.0.1:1/api/v1/predictions"

    def check_alive(self) -> None:
        pass


def test_capacity_steps_count_answers_by_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.measure.time.sleep", lambda _seconds: None)
    result = measure_capacity(
        cast(LoadClient, TwoWorkers()),
        cast(Service, FakeService()),
        make_image(320, 240, seed=0),
        phases=QUICK,
    )
    first = result.steps[0]  # 50/s for 2 s: 100 answers
    assert dict(first.answers_by_worker) == {"w1": 67, "w2": 33}
    assert [step.rate for step in result.steps] == [50, 100, 200, 400, 600]
    sent = [round(step.rate * QUICK.capacity_step_s) for step in result.steps]
    from_w2 = sum(len(range(2, count, 3)) for count in sent)
    assert answers_in_order(result, ["w2", "w1", "w3"]) == (from_w2, sum(sent) - from_w2, 0)


def _step(rate: float, achieved: float, answers: tuple[tuple[str, int], ...]) -> CapacityStep:
    return CapacityStep(
        rate=rate,
        achieved=achieved,
        latency=LatencySummary(requests=10, errors=0, p50_ms=1.0, p95_ms=2.0, p99_ms=3.0, max_ms=4.0),
        client_cpu_share=0.1,
        max_lag_ms=0.0,
        min_pace=0.95,
        answers_by_worker=answers,
    )


def test_the_answered_rate_is_that_of_the_highest_sustained_step() -> None:
    capacity = CapacityResult(
        [_step(100, 101.0, (("w1", 100),)), _step(300, 296.0, ()), _step(200, 150.0, ())]
    )
    point = ScalingPoint(
        workers=1,
        worker_cpus=(0,),
        request_partitions=(6,),
        request_partitions_after=(6,),
        answers_by_worker=(100,),
        capacity=capacity,
        load_avg_1m=0.5,
    )
    assert (point.sustained_rps, point.answered_rps, point.overload_answered_rps) == (300, 296.0, 150.0)
    nothing = ScalingPoint(
        workers=1,
        worker_cpus=(0,),
        request_partitions=(6,),
        request_partitions_after=(6,),
        answers_by_worker=(0,),
        capacity=CapacityResult([_step(100, 10.0, ())]),
        load_avg_1m=0.5,
    )
    assert (nothing.sustained_rps, nothing.answered_rps, nothing.overload_answered_rps) == (0, 0.0, 10.0)


def test_the_last_stdout_line_is_the_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    points = [
        ScalingPoint(
            workers=workers,
            worker_cpus=pinned_cpus(workers, [0, 1]),
            request_partitions=shares,
            request_partitions_after=shares,
            answers_by_worker=tuple(100 * share for share in shares),
            capacity=CapacityResult([_step(rate, rate - 3.0, ())]),
            load_avg_1m=1.25,
        )
        for workers, shares, rate in ((1, (6,), 500.0), (2, (3, 3), 560.0), (3, (2, 2, 2), 540.0))
    ]
    config = ScalingConfig(bench=quick_config(), worker_counts=(1, 2, 3), cpus=(0, 1), pin=True)
    results = ScalingResults(
        config=config, cpu=CpuInfo.parse(CPUINFO), points=points, load_avg_at_start=0.5, wall_s=300.0
    )
    print_scaling_report(results)
    out = capsys.readouterr().out
    assert "Example CPU @ 2.0GHz: AVX-512 yes, AVX2 yes" in out
    assert "1.12x" in out  # 557 / 497 answered/s
    assert "200/200/200 (33/33/33 %)" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["workers"] == [1, 2, 3]
    assert summary["answered_rps"] == [497.0, 557.0, 537.0]
    assert summary["sustained_rps"] == [500.0, 560.0, 540.0]
    assert summary["overload_answered_rps"] == [None, None, None]  # no step failed
    assert summary["request_partitions"] == [[6], [3, 3], [2, 2, 2]]
    assert summary["answers_by_worker"] == [[600], [300, 300], [200, 200, 200]]
    assert summary["worker_cpus"] == [[0], [0, 1], [0, 1, 0]]
    assert (summary["nproc"], summary["cpu_flags"]) == (2, "avx2 avx512f avx512_bf16 avx512_vnni")
    assert (summary["load_avg_1m"], summary["load_avg_at_start"]) == ([1.25] * 3, 0.5)


def _allowed_cpus(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))


@pytest.mark.integration
@pytest.mark.slow
def test_pinned_workers_hold_their_share_and_sign_their_answers(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = ServiceSpec(
        label="scale2",
        model_dir=tiny_model_dir,
        workers=2,
        worker_threads=1,
        max_new_tokens=4,
        min_new_tokens=4,
        worker_cpus=pinned_cpus(2, sorted(os.sched_getaffinity(0))),
    )
    run_id = f"t-scaling-{uuid.uuid4().hex[:6]}"
    with (
        running_service(spec, bootstrap=kafka_bootstrap, run_id=run_id, log_dir=tmp_path) as service,
        load_client() as client,
    ):
        assert GroupReader(kafka_bootstrap).wait_for_fair_shares(service, partitions=6) == (3, 3)
        assert [_allowed_cpus(worker.pid) for worker in service.workers] == [
            str(cpu) for cpu in spec.worker_cpus
        ]
        run = client.run(Sequential(target(service, [make_image(320, 240, seed=3)]), count=24))
    assert all(outcome.ok for outcome in run.outcomes)
    # Keys are random request ids: all 24 on one worker's 3 partitions would have odds of 2 in 2**24.
    assert {outcome.worker_id for outcome in run.outcomes} == set(service.worker_ids)
