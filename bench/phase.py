"""One phase of `make bench` alone, repeated: to compare two trees side by side in one session.

    python -m bench.phase saturation|capacity|api-cost|memory|exactly-once|in-process [--repeat N]
                                                                    (make bench-phase PHASE=... REPEAT=...)

Figures move between runs and machines, so a change is judged against its parent measured right before
or after it, on the same quiet machine. For an older commit that has no bench/phase.py, check it out in
a git worktree and run this file from the current tree with PYTHONPATH naming the worktree:

    PYTHONPATH=/path/to/worktree .venv/bin/python bench/phase.py capacity --repeat 2

The `bench` package (and the service it starts) then comes from the worktree; only this driver is new.
It prints the machine (CPU flags, sgemm rate) first, then one line per repeat. `exactly-once` runs the
base service (idle, saturation) and the tiny one (capacity) under each delivery guarantee, at least once
first, each pair back to back, and prints each figure as at_least_once / exactly_once. `in-process`
starts no service: the model's kernels replayed alone and one batch through its own code, stage by stage.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from bench.__main__ import ImageSets, capacity_phase, memory_phase, saturation_phase, service_spec
from bench.breakdown import CPU_ROLES, OTHER, POOL_STAGES, THREAD_STAGES, Breakdown
from bench.ceiling import Ceiling, describe_machine, workers_note
from bench.config import BenchConfig, load_config
from bench.inprocess import BatchRun
from bench.load import LoadClient, load_client
from bench.service import running_service, start_broker
from bench.warmup import warm_up_broker
from tests.support.processes import exit_on_sigterm

WARMUP_PAYLOAD_BYTES = 64 * 1024

Phase = Callable[[BenchConfig, ImageSets, LoadClient, str], str]


def saturation(config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str) -> str:
    spec = service_spec(config, "base")
    with running_service(spec, bootstrap=bootstrap, run_id=config.run_id, log_dir=config.run_dir) as service:
        result = saturation_phase(config, images, client, service)
    line = f"service_img_s {result.img_s:.3f} ({result.answered} answered in {result.wall_s:.0f} s)"
    return line if result.breakdown is None else f"{line} {where_the_time_went(result.breakdown)}"


def where_the_time_went(breakdown: Breakdown) -> str:
    """The inference thread's shares and each process's CPU per image (the saturation table's keys)."""
    shares = " ".join(
        f"{stage} {breakdown.wall_share(stage):.3f}"
        for stage in (*THREAD_STAGES, OTHER)
        if breakdown.wall_share(stage) > 0
    )
    pool = " ".join(f"{stage} {breakdown.ms_per_img(stage):.1f}" for stage in POOL_STAGES)
    cpu = " ".join(f"{role} {breakdown.cpu_ms_per_img(role):.1f}" for role in CPU_ROLES)
    return (
        f"worker_share: {shares}; worker_mean_batch {breakdown.mean_batch():.1f}; pool_ms_per_img: {pool};"
        f" cpu_ms_per_img: {cpu}"
    )


def capacity(config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str) -> str:
    result, api_cost = capacity_phase(config, images, client, bootstrap)
    floor = getattr(api_cost, "floor_cpu_ms_per_request", math.nan)  # an older tree measures none
    return (
        f"capacity_rps {result.capacity_rps:.0f} api_cpu_ms_per_request {api_cost.cpu_ms_per_request:.2f}"
        f" api_floor_cpu_ms_per_request {floor:.2f}"
    )


def api_cost(config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str) -> str:
    """The capacity phase's first figures alone: the bare server's floor, then the tiny API's CPU per
    request, without the step-up."""
    from bench.measure import API_COST_RATE, measure_api_cost

    duration_s = 2 * config.phases.capacity_step_s
    try:  # an older tree run with this driver (PYTHONPATH) has no bench/api_floor.py
        from bench.api_floor import measure_api_floor
    except ImportError:
        floor = math.nan
    else:
        floor = measure_api_floor(client, images.capacity, duration_s=duration_s, rate=API_COST_RATE)
    spec = service_spec(config, "tiny")
    with running_service(spec, bootstrap=bootstrap, run_id=config.run_id, log_dir=config.run_dir) as service:
        cost = measure_api_cost(client, service, images.capacity, duration_s=duration_s)
    loop = (  # an older tree run with this driver measures no loop figures
        f" api_loop_cpu_ms_per_request {cost.loop_cpu_ms_per_request:.2f}"
        f" api_loop_switches_per_request {cost.loop_switches_per_request:.1f}"
        if hasattr(cost, "loop_cpu_ms_per_request")
        else ""
    )
    return (
        f"api_cpu_ms_per_request {cost.cpu_ms_per_request:.2f} api_floor_cpu_ms_per_request {floor:.2f}{loop}"
    )


def memory(config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str) -> str:
    memory = memory_phase(config, images, client, bootstrap)
    peaks = " ".join(f"{peak:.0f}" for peak in memory.worker_uss_mb)
    return f"uss_mb_per_worker {peaks} uss_mb_fork_parent {memory.parent_uss_mb:.0f}"


def exactly_once(config: BenchConfig, images: ImageSets, client: LoadClient, bootstrap: str) -> str:
    # Imported here: an older tree run with this driver (PYTHONPATH) has none of it, and its other
    # phases must still run.
    from bench.__main__ import guarantee_base_phase
    from bench.exactly_once import AT_LEAST_ONCE, EXACTLY_ONCE, GuaranteeComparison, GuaranteeRun

    guarantees = (AT_LEAST_ONCE, EXACTLY_ONCE)
    bases = [guarantee_base_phase(config, images, client, bootstrap, guarantee) for guarantee in guarantees]
    capacities = [
        capacity_phase(config, images, client, bootstrap, guarantee=guarantee) for guarantee in guarantees
    ]
    at_least_once, exactly_once = (
        GuaranteeRun(guarantee=guarantee, idle=idle, saturation=saturation, capacity=result, api_cost=cost)
        for guarantee, (idle, saturation), (result, cost) in zip(guarantees, bases, capacities, strict=True)
    )
    comparison = GuaranteeComparison(at_least_once=at_least_once, exactly_once=exactly_once)
    return f"at_least_once / exactly_once: {comparison.describe()}"


def in_process(config: BenchConfig, images: ImageSets, _client: LoadClient, _bootstrap: str) -> str:
    return in_process_alone(config, images)


def in_process_alone(config: BenchConfig, images: ImageSets) -> str:
    """No service: the ceiling (the model's kernels replayed alone) and one batch through the model's own
    code, stage by stage; for a change to the model code, in under a minute."""
    from bench.__main__ import batch_phase

    run = batch_phase(config, images)
    return in_process_line(run.ceiling, run.batch)


def in_process_line(ceiling: Ceiling, batch: BatchRun) -> str:
    from bench.report import kernel_shares

    batch_ms = getattr(batch, "stage_seconds", {})
    stages = " ".join(
        f"{key} {share:.3f} ({1000 * batch_ms.get(key.removeprefix('kernel_share_'), math.nan):.0f} ms)"
        for key, share in kernel_shares(ceiling.kernels, batch).items()
    )
    workers = workers_note(getattr(ceiling, "processes", 1))  # an older tree run with this driver: one
    return (
        f"cpu_ceiling_img_s {ceiling.img_s:.2f} inprocess_batch_img_s {batch.img_s:.3f}{workers}"
        f" inprocess_ceiling_share {ceiling.share(batch.img_s):.3f} {stages}"
    )


PHASES: dict[str, Phase] = {
    "saturation": saturation,
    "capacity": capacity,
    "api-cost": api_cost,
    "memory": memory,
    "exactly-once": exactly_once,
    "in-process": in_process,
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.phase", description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=sorted(PHASES))
    parser.add_argument("--repeat", type=int, default=1, choices=range(1, 11), metavar="1..10")
    return parser.parse_args(argv)


def run(phase: Phase, repeat: int, *, config: BenchConfig, print_line: Callable[[str], object]) -> None:
    images = ImageSets.make(config.phases.images)
    if phase is in_process:  # no service, and no broker beside the model
        for index in range(1, repeat + 1):
            print_line(f"{index}/{repeat} {in_process_alone(config, images)}")
        return
    with ExitStack() as stack:
        bootstrap = start_broker(stack)
        warm_up_broker(bootstrap, topic=f"{config.run_id}-warmup", payload_bytes=WARMUP_PAYLOAD_BYTES)
        client = stack.enter_context(load_client())
        for index in range(1, repeat + 1):
            print_line(f"{index}/{repeat} {phase(config, images, client, bootstrap)}")


def main(argv: Sequence[str] | None = None) -> int:
    exit_on_sigterm()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = load_config()
    machine = describe_machine(config.worker_threads)
    print(f"{machine.describe()}: sgemm {machine.sgemm_gflops:.0f} GFLOP/s", flush=True)
    run(PHASES[args.phase], args.repeat, config=config, print_line=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
