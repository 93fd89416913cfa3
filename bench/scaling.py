"""`make bench-scaling` (or `.venv/bin/python -m bench.scaling`): the tiny-model service's answered rate with
1, 2, 3... workers, each worker pinned to a CPU of its own.

How to run
    make bench-scaling                        # N = 1, 2, 3 (a full run's duration: docs/scaling.md)
    BENCH_QUICK=1 make bench-scaling          # shorter capacity steps, no bisection
    BENCH_SCALING_WORKERS=1,2,4 make bench-scaling
    BENCH_SCALING_PIN=0 make bench-scaling    # no taskset: the scheduler places the workers (for comparison)
KAFKA_BOOTSTRAP_SERVERS, CAPTIONER_* and the generation length pass through as in `make bench`
(bench/__main__.py); the worker runs 1 torch thread unless CAPTIONER_WORKER_THREADS is set, as in the
bench's capacity run.

What it does, for each worker count N, one after the other
    Starts the service as `make bench` does (own topics, consumer group and port; tiny model), with N
    `captioner worker` processes, worker i (from 0) under `taskset -c` on CPU i mod nproc of the CPUs this
    process may use: all of a worker's threads (torch, decoding, librdkafka) share that one CPU. The API,
    the broker and the load client are not pinned: on a 2-core machine no CPU is left over for them once
    N >= 2, and pinning them to a worker's CPU would only choose which worker they slow down; unpinned,
    the scheduler gives them whatever the workers leave idle, on the same terms for every N. (With more
    cores than workers, pinning them to the remaining CPUs would give N = 1 more room than N = 3, which
    the comparison should not depend on.) With N > nproc two workers share a CPU: the table says so.
    Then it waits until the N workers' request consumers hold their fair share of the request topic's
    partitions (floor or ceil of partitions / N, read with AdminClient.describe_consumer_groups; up to
    60 s, then it measures anyway and the table shows what they held), runs the bench's capacity
    step-up (bench/measure.py: open-loop constant rates, 4 s steps, then two bisections; quick: 2 s
    steps, no bisection), reads the assignment again, and stops the service.

What each number means (the JSON object on the last line of stdout; lists in the order of `workers`)
    answered_rps        answers/s (over the answers' own span) at the highest offered rate the service
                        sustained: every request answered 200 and answers keeping pace with arrivals (the
                        `make bench` capacity_rps criterion).
    sustained_rps       that offered rate (capacity_rps of `make bench` for this worker count).
    overload_answered_rps  answers/s at the first offered rate that was not sustained: the rate at
                        saturation, with a backlog growing (null if every step passed).
    request_partitions  request partitions held by each worker when the measurement started ...
    request_partitions_after  ... and when it ended (a change means a rebalance during the run).
    answers_by_worker   answers given by each worker over all the steps (`worker_id` of each answer).
    worker_cpus         the CPU each worker was pinned to (empty lists: not pinned).
    load_avg_1m         the machine's 1-minute load average just before each measurement: it includes
                        this run's own service and broker, so it is high even on an idle machine ...
    load_avg_at_start   ... and before anything started: what others were running.
    cpu_model, cpu_flags, nproc   the machine: the model name and the vector-extension flags of
                        /proc/cpuinfo, and the CPUs this process may use.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.config import BenchConfig, load_config
from bench.images import make_image
from bench.load import LoadClient, load_client
from bench.measure import CapacityResult, measure_capacity
from bench.models import ensure_model
from bench.report import capacity_table, stdout_console
from bench.service import Service, ServiceSpec, running_service, start_broker
from bench.warmup import warm_up_broker
from captioner.processes import exit_on_sigterm
from core.kafka_config import client_config
from core.settings import KafkaSettings, TopicSettings

DEFAULT_WORKER_COUNTS = (1, 2, 3)
SHARE_TIMEOUT_S = 60.0
WARMUP_PAYLOAD_BYTES = 16 * 1024  # about the capacity image's JPEG
# The flags that decide how fast torch runs on a CPU, in the order they are printed.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")

progress = Console(stderr=True)


def log(message: str) -> None:
    progress.log(message, highlight=False)


# ---- configuration and the machine ---------------------------------------------------------------------


def parse_worker_counts(text: str) -> tuple[int, ...]:
    """BENCH_SCALING_WORKERS, e.g. "1,2,3": positive worker counts, in the order given."""
    counts = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    if not counts or min(counts) < 1:
        raise ValueError(f"BENCH_SCALING_WORKERS wants positive worker counts like 1,2,3, not {text!r}")
    return counts


def pinned_cpus(workers: int, cpus: Sequence[int]) -> tuple[int, ...]:
    """The CPU of each of `workers` workers: worker i on the i-th usable CPU, wrapping round."""
    return tuple(cpus[index % len(cpus)] for index in range(workers))


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @classmethod
    def parse(cls, cpuinfo: str) -> CpuInfo:
        """The first processor's `model name` and `flags` of /proc/cpuinfo."""
        fields: dict[str, str] = {}
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        flags = frozenset(fields.get("flags", "").split())
        return cls(model=fields.get("model name", "unknown"), flags=flags)

    @property
    def vector_flags(self) -> str:
        return " ".join(flag for flag in VECTOR_FLAGS if flag in self.flags) or "none of " + " ".join(
            VECTOR_FLAGS
        )

    def describe(self) -> str:
        def has(flag: str) -> str:
            return "yes" if flag in self.flags else "no"

        return (
            f"{self.model}: AVX-512 {has('avx512f')}, AVX2 {has('avx2')}, AMX {has('amx_tile')} "
            f"({self.vector_flags})"
        )


def read_cpu_info(path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    try:
        return CpuInfo.parse(path.read_text())
    except OSError:
        return CpuInfo(model="unknown", flags=frozenset())


@dataclass(frozen=True)
class ScalingConfig:
    bench: BenchConfig  # run id and directory, phases, generation length, worker threads
    worker_counts: tuple[int, ...]
    cpus: tuple[int, ...]  # the CPUs this process may use, which the workers are pinned to
    pin: bool  # False: no taskset, for comparison


def load_scaling_config(env: Mapping[str, str] = os.environ) -> ScalingConfig:
    counts = env.get("BENCH_SCALING_WORKERS")
    return ScalingConfig(
        bench=load_config(env),
        worker_counts=parse_worker_counts(counts) if counts else DEFAULT_WORKER_COUNTS,
        cpus=tuple(sorted(os.sched_getaffinity(0))),
        pin=env.get("BENCH_SCALING_PIN", "1") not in ("0", "false", "no"),
    )


# ---- who holds the request topic -----------------------------------------------------------------------


def request_client_id(worker_id: str) -> str:
    """client.id of a worker's request-topic consumer (inference_consumer.worker's subscriptions)."""
    return f"captioner-worker-{worker_id}-requests"


def shares_by_worker(held: Mapping[str, int], worker_ids: Sequence[str]) -> tuple[int, ...]:
    """Request partitions of each worker, in order, from {client.id: partitions} of the group's members;
    0 for a worker that is not (yet) a member."""
    return tuple(held.get(request_client_id(worker), 0) for worker in worker_ids)


def fair(shares: Sequence[int], partitions: int) -> bool:
    """Every partition held, each worker holding floor or ceil of partitions / workers."""
    return sum(shares) == partitions and set(shares) <= {
        partitions // len(shares),
        -(-partitions // len(shares)),
    }


class GroupReader:
    """Reads who holds what in a consumer group, as the group coordinator has it."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka.admin import AdminClient

        config = client_config(KafkaSettings(), client_id="bench-scaling-admin")
        self._admin = AdminClient(config | {"bootstrap.servers": bootstrap})

    def held_partitions(self, group: str, topic: str) -> dict[str, int]:
        """{client.id: partitions of `topic`} of the members of `group`."""
        [described] = self._admin.describe_consumer_groups([group], request_timeout=10).values()
        return {
            member.client_id: sum(tp.topic == topic for tp in member.assignment.topic_partitions)
            for member in described.result(timeout=15).members
        }

    def request_shares(self, service: Service) -> tuple[int, ...]:
        topics = service.topics
        held = self.held_partitions(topics["CAPTIONER_WORKER_GROUP_ID"], topics["CAPTIONER_TOPIC_REQUESTS"])
        return shares_by_worker(held, service.worker_ids)

    def wait_for_fair_shares(self, service: Service, partitions: int) -> tuple[int, ...]:
        """The workers' request partitions once fair, or what they hold after SHARE_TIMEOUT_S."""
        give_up = time.monotonic() + SHARE_TIMEOUT_S
        while not fair(shares := self.request_shares(service), partitions):
            service.check_alive()
            if time.monotonic() > give_up:
                log(f"workers still hold {list(shares)} request partitions after {SHARE_TIMEOUT_S:g} s")
                return shares
            time.sleep(0.5)
        return shares


# ---- one worker count ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalingPoint:
    workers: int
    worker_cpus: tuple[int, ...]
    request_partitions: tuple[int, ...]
    request_partitions_after: tuple[int, ...]
    answers_by_worker: tuple[int, ...]
    capacity: CapacityResult
    load_avg_1m: float

    @property
    def answered_rps(self) -> float:
        sustained = self.capacity.sustained
        return sustained.achieved if sustained else 0.0

    @property
    def sustained_rps(self) -> float:
        return self.capacity.capacity_rps

    @property
    def overload_answered_rps(self) -> float | None:
        """Answers/s at the lowest offered rate that was not sustained; None if every step passed."""
        failed = [step for step in self.capacity.steps if not step.passed]
        return min(failed, key=lambda step: step.rate).achieved if failed else None


def answers_in_order(capacity: CapacityResult, worker_ids: Sequence[str]) -> tuple[int, ...]:
    by_worker = capacity.answers_by_worker()
    return tuple(by_worker[worker] for worker in worker_ids)


def measure_workers(
    config: ScalingConfig, workers: int, client: LoadClient, bootstrap: str, partitions: int
) -> ScalingPoint:
    group = GroupReader(bootstrap)
    bench = config.bench
    spec = ServiceSpec(
        label=f"scale{workers}",
        model_dir=ensure_model("tiny"),
        workers=workers,
        worker_threads=bench.capacity_worker_threads,
        max_new_tokens=bench.max_new_tokens,
        min_new_tokens=bench.min_new_tokens,
        worker_cpus=pinned_cpus(workers, config.cpus) if config.pin else (),
    )
    log(f"{workers} worker(s) on CPUs {list(spec.worker_cpus) or 'of the scheduler'}: starting the service")
    with running_service(spec, bootstrap=bootstrap, run_id=bench.run_id, log_dir=bench.run_dir) as service:
        shares = group.wait_for_fair_shares(service, partitions)
        load_avg = os.getloadavg()[0]
        log(f"request partitions {list(shares)}; load average {load_avg:.2f}; capacity step-up")
        capacity = measure_capacity(client, service, make_image(320, 240, seed=200), phases=bench.phases)
        after = group.request_shares(service)
        log(f"{workers} worker(s): {capacity.capacity_rps:.0f} req/s sustained; stopping")
    return ScalingPoint(
        workers=workers,
        worker_cpus=spec.worker_cpus,
        request_partitions=shares,
        request_partitions_after=after,
        answers_by_worker=answers_in_order(capacity, service.worker_ids),
        capacity=capacity,
        load_avg_1m=load_avg,
    )


# ---- the run and its report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalingResults:
    config: ScalingConfig
    cpu: CpuInfo
    points: list[ScalingPoint]
    load_avg_at_start: float
    wall_s: float

    def summary(self) -> dict[str, Any]:
        points = self.points
        return {
            "workers": [point.workers for point in points],
            "answered_rps": [round(point.answered_rps, 1) for point in points],
            "sustained_rps": [point.sustained_rps for point in points],
            "overload_answered_rps": [_rounded(point.overload_answered_rps) for point in points],
            "request_partitions": [list(point.request_partitions) for point in points],
            "request_partitions_after": [list(point.request_partitions_after) for point in points],
            "answers_by_worker": [list(point.answers_by_worker) for point in points],
            "worker_cpus": [list(point.worker_cpus) for point in points],
            "load_avg_1m": [round(point.load_avg_1m, 2) for point in points],
            "load_avg_at_start": round(self.load_avg_at_start, 2),
            "cpu_model": self.cpu.model,
            "cpu_flags": self.cpu.vector_flags,
            "nproc": len(self.config.cpus),
            "quick": self.config.bench.quick,
            "wall_s": round(self.wall_s, 1),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _spread_text(answers: Sequence[int]) -> str:
    """e.g. "870/816/794 (35/33/32 %)"."""
    total = sum(answers)
    counts = "/".join(map(str, answers))
    return f"{counts} ({'/'.join(f'{100 * count / total:.0f}' for count in answers)} %)" if total else counts


def scaling_table(results: ScalingResults) -> Table:
    cpus = len(results.config.cpus)
    pinning = "each worker pinned" if results.config.pin else "workers not pinned"
    table = Table(
        title=f"answered rate by worker count (tiny model, {pinning}; {cpus} CPUs)",
        caption="partitions: request partitions of each worker; sustained/s: the highest offered rate "
        "sustained, answered/s: answers/s at that rate; overloaded/s: answers/s at the first rate not "
        "sustained",
    )
    for column in ("workers", "CPUs", "partitions", "sustained/s", "answered/s", "vs first", "overloaded/s"):
        table.add_column(column, justify="right")
    table.add_column("answers by worker")
    table.add_column("load avg", justify="right")
    first = results.points[0].answered_rps if results.points else 0.0
    for point in results.points:
        partitions = "/".join(map(str, point.request_partitions))
        if point.request_partitions_after != point.request_partitions:
            partitions += " -> " + "/".join(map(str, point.request_partitions_after))
        table.add_row(
            str(point.workers),
            ",".join(map(str, point.worker_cpus)) or "any",
            partitions,
            f"{point.sustained_rps:.0f}",
            f"{point.answered_rps:.0f}",
            f"{point.answered_rps / first:.2f}x" if first else "-",
            "-" if point.overload_answered_rps is None else f"{point.overload_answered_rps:.0f}",
            _spread_text(point.answers_by_worker),
            f"{point.load_avg_1m:.2f}",
        )
    return table


def print_scaling_report(results: ScalingResults) -> None:
    console = stdout_console()
    console.print(f"CPU: {results.cpu.describe()}", highlight=False)
    console.print(f"nproc: {len(results.config.cpus)}", highlight=False)
    for point in results.points:
        console.print(capacity_table(point.capacity, title=f"capacity steps, {point.workers} worker(s)"))
    console.print(scaling_table(results))
    where = results.config.bench.run_dir
    console.print(f"wall time {results.wall_s:.0f} s; logs in {where}", highlight=False)
    sys.stdout.flush()
    print(json.dumps(results.summary()), flush=True)


def run(config: ScalingConfig) -> ScalingResults:
    started, load_avg = time.perf_counter(), os.getloadavg()[0]
    cpu = read_cpu_info()
    log(f"run {config.bench.run_id}: workers {list(config.worker_counts)}; load average {load_avg:.2f}")
    log(f"CPU {cpu.describe()}")
    ensure_model("tiny")
    partitions = TopicSettings().request_partitions
    points: list[ScalingPoint] = []
    with ExitStack() as stack:
        bootstrap = start_broker(stack)
        log("broker warm-up: produce+fetch round trips on a scratch topic")
        warmup = warm_up_broker(
            bootstrap, topic=f"{config.bench.run_id}-warmup", payload_bytes=WARMUP_PAYLOAD_BYTES
        )
        log(warmup.describe())
        client = stack.enter_context(load_client())
        for workers in config.worker_counts:
            points.append(measure_workers(config, workers, client, bootstrap, partitions))
    return ScalingResults(
        config=config,
        cpu=cpu,
        points=points,
        load_avg_at_start=load_avg,
        wall_s=time.perf_counter() - started,
    )


def main() -> int:
    exit_on_sigterm()
    config = load_scaling_config()
    results = run(config)
    config.bench.run_dir.mkdir(parents=True, exist_ok=True)
    (config.bench.run_dir / "scaling.json").write_text(json.dumps(results.summary(), indent=2) + "\n")
    print_scaling_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
