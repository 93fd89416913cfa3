"""All results of one run: the readable tables, and the one-line JSON summary printed last."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bench.bf16 import Bf16Result
from bench.breakdown import CPU_ROLES, OTHER, POOL_STAGES, THREAD_STAGES, Breakdown
from bench.ceiling import Ceiling, KernelTime, workers_note
from bench.config import BenchConfig
from bench.exactly_once import AT_LEAST_ONCE, GuaranteeComparison, GuaranteeRun
from bench.gpu_phase import GpuResult
from bench.images import BenchImage
from bench.inprocess import BATCH_REPEATS, BatchRun, DecoderCheck
from bench.measure import (
    ApiCost,
    CapacityResult,
    IdleResult,
    RepeatResult,
    SaturationResult,
    SteadyResult,
    steady_at,
    steady_rate,
)
from bench.naive import NaiveResult
from bench.queueing import BatchCostModel, greedy_p99_s
from bench.stats import LatencySummary, median
from bench.warmup import WarmupResult
from inference_consumer import stages

CONTINUITY_FRACTION = 0.65  # p50_ms, p95_ms and p99_ms are this run's, as in earlier versions
LEVEL_KEYS = {"p99_ms_30": 0.3, "p99_ms_65": 0.65, "p99_ms_90": 0.9}
# Where the time goes at saturation (bench/breakdown.py): each inference-thread stage's share of the
# workers' wall time, the decode pool's ms per image, each process's CPU ms per image.
BREAKDOWN_KEYS = (
    *(f"worker_share_{stage}" for stage in (*THREAD_STAGES, OTHER)),
    "worker_mean_batch",
    *(f"{stage}_ms_per_img" for stage in POOL_STAGES),
    *(f"cpu_ms_per_img_{role}" for role in CPU_ROLES),
)

# Each model stage of the in-process batch against its own kernels replayed alone (bench/ceiling.py):
# where inprocess_ceiling_share is lost.
KERNEL_SHARE_KEYS = {
    f"kernel_share_{stage}": stage for stage in (stages.IMAGE_ENCODER, stages.PREFILL, stages.DECODING_STEPS)
}

# The same figures with exactly once (bench/exactly_once.py), and its throughputs over at least once's.
EXACTLY_ONCE_KEYS = (
    "service_img_s_eos",
    "idle_ms_eos",
    "overhead_p50_ms_eos",
    "capacity_rps_eos",
    "api_cpu_ms_per_request_eos",
    "eos_saturation_ratio",
    "eos_capacity_ratio",
)

SUMMARY_KEYS = (
    "naive_img_s",
    "service_img_s",
    "service_img_s_repeat50",
    "ratio",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "idle_ms",
    "p99_ms_30",
    "p99_ms_65",
    "p99_ms_90",
    "p99_ms_65_ideal",
    "overhead_p50_ms",
    "capacity_rps",
    "api_cpu_ms_per_request",
    "api_floor_cpu_ms_per_request",
    "api_loop_cpu_ms_per_request",
    "api_loop_switches_per_request",
    "worker_rss_mb",
    "uss_mb_per_worker",
    "uss_mb_fork_parent",
    "decoder_identical",
    "sgemm_gflops",
    "model_gflop_per_img",
    "cpu_ceiling_img_s",
    "ceiling_share",
    "inprocess_batch_img_s",
    "inprocess_ceiling_share",
    "service_inprocess_share",
    *KERNEL_SHARE_KEYS,
    "cpu_flags",
    "sgemm_ceiling_img_s",
    *BREAKDOWN_KEYS,
    "service_img_s_bf16",
    "cpu_ceiling_img_s_bf16",
    "ceiling_share_bf16",
    "bf16_same_titles",
    *EXACTLY_ONCE_KEYS,
    "gpu_service_img_s",
    "gpu_inprocess_img_s",
    "gpu_p99_ms",
    "gpu_name",
)


def kernel_shares(kernels: KernelTime, batch: BatchRun) -> dict[str, float]:
    """KERNEL_SHARE_KEYS: each stage of the in-process batch against its own kernels replayed alone; NaN
    where either was not measured (an older tree, the hf decoder)."""
    kernel_s = getattr(kernels, "stage_seconds", {})  # an older tree run with bench.phase has none
    batch_s = getattr(batch, "stage_seconds", {})
    return {
        key: kernel_s.get(stage, math.nan) / batch_s.get(stage, math.nan)
        for key, stage in KERNEL_SHARE_KEYS.items()
    }


@dataclass(frozen=True)
class BenchResults:
    config: BenchConfig
    images: list[BenchImage]
    overhead_image: BenchImage
    capacity_image: BenchImage
    naive: NaiveResult
    decoders: DecoderCheck
    warmup: WarmupResult
    idle: IdleResult
    saturation: SaturationResult
    steady: tuple[SteadyResult, ...]  # one open-loop run per load level
    repeat50: RepeatResult
    capacity: CapacityResult
    api_cost: ApiCost
    worker_rss_mb: float
    worker_uss_mb: list[float]  # each of two base-model workers' peak USS, forked from one process
    ceiling: Ceiling
    batch: BatchRun  # one full batch in-process, alone: the best the service could do here
    wall_s: float
    fork_parent_uss_mb: float = math.nan  # the peak USS of the process that forked them
    gpu: GpuResult | None = None  # None without CUDA
    bf16: Bf16Result | None = None  # None where the CPU lacks native bfloat16
    # The base and tiny services again with exactly once; None where the run's own already were
    exactly_once: GuaranteeRun | None = None

    @property
    def guarantees(self) -> GuaranteeComparison | None:
        """This run's at-least-once figures beside its exactly-once ones, where it measured those."""
        if self.exactly_once is None:
            return None
        at_least_once = GuaranteeRun(
            guarantee=AT_LEAST_ONCE,
            idle=self.idle,
            saturation=self.saturation,
            capacity=self.capacity,
            api_cost=self.api_cost,
        )
        return GuaranteeComparison(at_least_once=at_least_once, exactly_once=self.exactly_once)

    @property
    def inprocess_ceiling_share(self) -> float:
        """The in-process batch's share of the ceiling: what the model's own run reaches of its kernels."""
        return self.ceiling.share(self.batch.img_s)

    def kernel_share(self, stage: str) -> float:
        return kernel_shares(self.ceiling.kernels, self.batch)[f"kernel_share_{stage}"]

    @property
    def service_inprocess_share(self) -> float:
        """The service's share of the in-process batch: what the service around the model keeps of it."""
        return self.saturation.img_s / self.batch.img_s

    @property
    def overhead_p50_ms(self) -> float:
        """What the service adds around the model (IdleResult.overhead_p50_ms)."""
        return self.idle.overhead_p50_ms

    @property
    def idle_ms(self) -> float:
        """One image's end-to-end latency on the idle service: the median of the sequential requests."""
        return median(self.idle.e2e_ms)

    @property
    def ideal_p99_ms_65(self) -> float:
        """The p99 of ideal batching workers at the 65% load (bench/queueing.py), plus what the idle
        request spent outside the model; NaN when the figures make no batch cost. With several workers
        each takes its share of the arrivals (the request topic's partitions, by key) at its share of the
        service's rate, so one worker's p99 is theirs."""
        idle_model_ms, workers = median(self.idle.inference_ms), self.config.workers
        cost = BatchCostModel.from_bench(
            idle_inference_s=idle_model_ms / 1000, service_img_s=self.saturation.img_s / workers
        )
        if cost is None:
            return math.nan
        rate = steady_rate(self.saturation.img_s, CONTINUITY_FRACTION) / workers
        p99_s = greedy_p99_s(cost, rate=rate, cap=self.config.batch_size)
        return 1000 * p99_s + (self.idle_ms - idle_model_ms)

    def latency_at(self, fraction: float) -> LatencySummary | None:
        level = steady_at(self.steady, fraction)
        return level.latency if level else None

    def summary(self) -> dict[str, float | bool | str | None]:
        continuity = self.latency_at(CONTINUITY_FRACTION)
        gpu, bf16 = self.gpu, self.bf16
        values: dict[str, float | bool | str | None] = {
            "naive_img_s": self.naive.img_s,
            "service_img_s": self.saturation.img_s,
            "service_img_s_repeat50": self.repeat50.saturation.img_s,
            "ratio": self.saturation.img_s / self.naive.img_s,
            "p50_ms": continuity.p50_ms if continuity else math.nan,
            "p95_ms": continuity.p95_ms if continuity else math.nan,
            "p99_ms": continuity.p99_ms if continuity else math.nan,
            "idle_ms": self.idle_ms,
            **{key: _p99_ms(self.latency_at(fraction)) for key, fraction in LEVEL_KEYS.items()},
            "p99_ms_65_ideal": self.ideal_p99_ms_65,
            "overhead_p50_ms": self.overhead_p50_ms,
            "capacity_rps": self.capacity.capacity_rps,
            "api_cpu_ms_per_request": self.api_cost.cpu_ms_per_request,
            "api_floor_cpu_ms_per_request": self.api_cost.floor_cpu_ms_per_request,
            "api_loop_cpu_ms_per_request": self.api_cost.loop_cpu_ms_per_request,
            "api_loop_switches_per_request": self.api_cost.loop_switches_per_request,
            "worker_rss_mb": self.worker_rss_mb,
            "uss_mb_per_worker": max(self.worker_uss_mb, default=math.nan),
            "uss_mb_fork_parent": self.fork_parent_uss_mb,
            "decoder_identical": self.decoders.identical,
            "sgemm_gflops": self.ceiling.machine.sgemm_gflops,
            "model_gflop_per_img": self.ceiling.model_gflop_per_img,
            "cpu_ceiling_img_s": self.ceiling.img_s,
            "ceiling_share": self.ceiling.share(self.saturation.img_s),
            "inprocess_batch_img_s": self.batch.img_s,
            "inprocess_ceiling_share": self.inprocess_ceiling_share,
            "service_inprocess_share": self.service_inprocess_share,
            **kernel_shares(self.ceiling.kernels, self.batch),
            "cpu_flags": " ".join(self.ceiling.machine.flags),
            "sgemm_ceiling_img_s": self.ceiling.sgemm_img_s,
            **breakdown_summary(self.saturation.breakdown),
            "service_img_s_bf16": bf16.service_img_s if bf16 else None,
            "cpu_ceiling_img_s_bf16": bf16.ceiling.img_s if bf16 else None,
            "ceiling_share_bf16": bf16.ceiling_share if bf16 else None,
            "bf16_same_titles": bf16.same_titles if bf16 else None,
            **exactly_once_summary(self.guarantees),
            "gpu_service_img_s": gpu.service_img_s if gpu else None,
            "gpu_inprocess_img_s": gpu.inprocess_img_s if gpu else None,
            "gpu_p99_ms": gpu.p99_ms if gpu else None,
            "gpu_name": gpu.name if gpu else None,
        }
        return {key: _json_number(values[key]) for key in SUMMARY_KEYS}


def exactly_once_summary(guarantees: GuaranteeComparison | None) -> dict[str, float | None]:
    """EXACTLY_ONCE_KEYS; None each when the run did not measure exactly once."""
    if guarantees is None:
        return dict.fromkeys(EXACTLY_ONCE_KEYS)
    eos = guarantees.exactly_once
    return {
        "service_img_s_eos": eos.service_img_s,
        "idle_ms_eos": eos.idle_ms,
        "overhead_p50_ms_eos": eos.overhead_p50_ms,
        "capacity_rps_eos": eos.capacity_rps,
        "api_cpu_ms_per_request_eos": eos.api_cpu_ms_per_request,
        "eos_saturation_ratio": guarantees.saturation_ratio,
        "eos_capacity_ratio": guarantees.capacity_ratio,
    }


def breakdown_summary(breakdown: Breakdown | None) -> dict[str, float | None]:
    """BREAKDOWN_KEYS of one saturation window; None each when it was not read."""
    if breakdown is None:
        return dict.fromkeys(BREAKDOWN_KEYS)
    return {
        **{f"worker_share_{stage}": breakdown.wall_share(stage) for stage in (*THREAD_STAGES, OTHER)},
        "worker_mean_batch": breakdown.mean_batch(),
        **{f"{stage}_ms_per_img": breakdown.ms_per_img(stage) for stage in POOL_STAGES},
        **{f"cpu_ms_per_img_{role}": breakdown.cpu_ms_per_img(role) for role in CPU_ROLES},
    }


def _p99_ms(latency: LatencySummary | None) -> float:
    return latency.p99_ms if latency else math.nan


def _json_number(value: float | bool | str | None) -> float | bool | str | None:
    if value is None or isinstance(value, bool | str):
        return value
    return None if math.isnan(value) else round(value, 3 if abs(value) < 10 else 1)


def stdout_console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 130, soft_wrap=False)


def print_report(results: BenchResults) -> None:
    """The tables, then the JSON summary as the very last line of stdout."""
    console = stdout_console()
    console.print(_headline(results))
    console.print(_idle_table(results))
    if results.saturation.breakdown is not None:
        console.print(breakdown_table(results.saturation.breakdown))
    console.print(_steady_table(results))
    console.print(capacity_table(results.capacity))
    if results.guarantees is not None:
        console.print(guarantees_table(results.guarantees))
    console.print(results.warmup.describe(), highlight=False)
    console.print(
        f"logs: {results.config.run_dir}   wall time: {results.wall_s:.0f} s   quick: {results.config.quick}",
        highlight=False,
    )
    sys.stdout.flush()
    print(json.dumps(results.summary()), flush=True)


def _headline(results: BenchResults) -> Table:
    config, naive, saturation = results.config, results.naive, results.saturation
    tokens = f"{config.min_new_tokens}..{config.max_new_tokens} new tokens"
    table = Table(
        title=f"captioner benchmark (GIT-base shape, random weights, {tokens}, {config.workers} worker(s))"
    )
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_column("how it was measured")
    table.add_row(
        "naive_img_s",
        f"{naive.img_s:.3f}",
        f"in-process HF generate, one image at a time: {naive.images} photos in {naive.seconds:.1f} s, "
        f"{naive.words_per_title:.1f} words/caption",
    )
    table.add_row(
        "service_img_s",
        f"{saturation.img_s:.3f}",
        f"HTTP -> Kafka -> worker(s), closed loop at {saturation.concurrency} in flight, "
        f"{saturation.answered} answered, errors {saturation.latency.errors_text} "
        f"in {saturation.wall_s:.0f} s, "
        f"{saturation.words_per_title:.1f} words/caption, client CPU {saturation.client_cpu_share:.0%}",
    )
    repeat = results.repeat50.saturation
    table.add_row(
        "service_img_s_repeat50",
        f"{repeat.img_s:.3f}",
        f"same closed loop, every other image already captioned: {repeat.answered} answered "
        f"({results.repeat50.cached} from the cache), errors {repeat.latency.errors_text} "
        f"in {repeat.wall_s:.0f} s",
    )
    table.add_row("ratio", f"{saturation.img_s / naive.img_s:.2f}", "service_img_s / naive_img_s")
    _latency_rows(table, results)
    table.add_row(
        "overhead_p50_ms",
        f"{results.overhead_p50_ms:.0f}",
        f"idle: p50 of (end-to-end - worker inference_ms) {median(results.idle.outside_model_ms):.0f} ms - "
        f"in-process decode + preprocess p50 {median(results.idle.reference_prep_ms):.0f} ms "
        f"({results.overhead_image.name}, base model)",
    )
    table.add_row(
        "capacity_rps",
        f"{results.capacity.capacity_rps:.0f}",
        f"tiny model, {results.capacity_image.name}: highest step-up rate with 0 errors, "
        "answers keeping pace",
    )
    cost = results.api_cost
    table.add_row(
        "api_cpu_ms_per_request",
        f"{cost.cpu_ms_per_request:.2f}",
        f"tiny model, {cost.rate:g} req/s offered: the API process's CPU time over {cost.requests} requests "
        f"({cost.answered} answered), tracing and cache as shipped",
    )
    table.add_row(
        "api_floor_cpu_ms_per_request",
        f"{cost.floor_cpu_ms_per_request:.2f}",
        "the same loop against a bare aiohttp server (reads the body, answers JSON): the floor under it",
    )
    table.add_row(
        "api_loop_cpu_ms_per_request",
        f"{cost.loop_cpu_ms_per_request:.2f}",
        "of which the API's event loop (its main thread)",
    )
    table.add_row(
        "api_loop_switches_per_request",
        f"{cost.loop_switches_per_request:.1f}",
        "the event loop's context switches per request: each one a wake-up",
    )
    table.add_row(
        "worker_rss_mb", f"{results.worker_rss_mb:.0f}", "peak VmRSS, summed over workers, base run"
    )
    peaks = ", ".join(f"{peak:.0f}" for peak in results.worker_uss_mb)
    table.add_row(
        "uss_mb_per_worker",
        f"{max(results.worker_uss_mb, default=math.nan):.0f}",
        "peak private memory (USS) of the larger of two base-model workers forked from one process, at "
        f"saturation (each: {peaks} MB); the shared weights and imports not counted",
    )
    table.add_row(
        "uss_mb_fork_parent",
        f"{results.fork_parent_uss_mb:.0f}",
        "peak USS of the process that forked them: the imports they share, less what each copied",
    )
    table.add_row(
        "decoder_identical",
        str(results.decoders.identical),
        f"fast decoder token ids == HF generate's, batches of 4 and 12, {config.max_new_tokens} tokens "
        f"(service decoder: {results.decoders.decoder})",
    )
    _ceiling_rows(table, results)
    return table


def _latency_rows(table: Table, results: BenchResults) -> None:
    continuity, fraction = results.latency_at(CONTINUITY_FRACTION), f"{CONTINUITY_FRACTION:.0%}"
    if continuity is not None:
        table.add_row(
            "p50_ms", f"{continuity.p50_ms:.0f}", f"open-loop Poisson at {fraction} of service_img_s"
        )
        table.add_row("p95_ms", f"{continuity.p95_ms:.0f}", "same run")
        table.add_row("p99_ms", f"{continuity.p99_ms:.0f}", f"same run; max {continuity.max_ms:.0f} ms")
    table.add_row(
        "idle_ms", f"{results.idle_ms:.0f}", "idle: p50 end-to-end of one image, sequential requests"
    )
    for key, level in LEVEL_KEYS.items():
        latency = results.latency_at(level)
        p99 = latency.p99_ms if latency else math.nan
        table.add_row(
            key, f"{p99:.0f}", f"p99 at {level:.0%} of service_img_s; {p99 / results.idle_ms:.1f} x idle_ms"
        )
    ideal = results.ideal_p99_ms_65
    table.add_row(
        "p99_ms_65_ideal",
        f"{ideal:.0f}",
        f"an ideal batching worker at 65%: greedy batches, cost fitted to the idle model time and "
        f"service_img_s (bench/queueing.py); {ideal / results.idle_ms:.1f} x idle_ms",
    )


def _steady_table(results: BenchResults) -> Table:
    """Each open-loop load level: rate, duration and latency percentiles."""
    table = Table(title="latency under load (base model, open-loop Poisson, from each request's due time)")
    for column in (
        "load",
        "req/s",
        "s",
        "requests",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "lag ms",
    ):
        table.add_column(column, justify="right")
    for level in results.steady:
        latency = level.latency
        table.add_row(
            f"{level.fraction:.0%}",
            f"{level.rate:.2f}",
            f"{level.duration_s:.0f}",
            str(latency.requests),
            latency.errors_text,
            f"{latency.p50_ms:.0f}",
            f"{latency.p95_ms:.0f}",
            f"{latency.p99_ms:.0f}",
            f"{latency.max_ms:.0f}",
            f"{level.max_lag_ms:.0f}",
        )
    return table


def _ceiling_rows(table: Table, results: BenchResults) -> None:
    ceiling, machine = results.ceiling, results.ceiling.machine
    table.add_row(
        "sgemm_gflops", f"{machine.sgemm_gflops:.0f}", f"fp32 {machine.describe()}, best of 5 4096^3 matmuls"
    )
    table.add_row(
        "model_gflop_per_img",
        f"{ceiling.model_gflop_per_img:.1f}",
        "torch's FLOP counter over one caption (encoder and every decoding step), batch of 1",
    )
    kernels = ceiling.kernels
    table.add_row(
        "cpu_ceiling_img_s",
        f"{ceiling.img_s:.2f}",
        f"the model's matrix kernels ({kernels.dtype}) of one batch of {kernels.batch}, each of "
        f"{kernels.distinct} distinct replayed alone, best time x its {kernels.calls} calls"
        f"{workers_note(ceiling.processes)}",
    )
    table.add_row(
        "ceiling_share",
        f"{ceiling.share(results.saturation.img_s):.0%}",
        "service_img_s / cpu_ceiling_img_s: comparable across machines, at most 1",
    )
    batch = results.batch
    table.add_row(
        "inprocess_batch_img_s",
        f"{batch.img_s:.2f}",
        f"one batch of {batch.batch} photos through the worker's model code in-process, alone (best of "
        f"{BATCH_REPEATS}){workers_note(batch.processes)}: {results.inprocess_ceiling_share:.0%} of the "
        "ceiling (inprocess_ceiling_share), "
        f"the service {results.service_inprocess_share:.0%} of it (service_inprocess_share)",
    )
    stage_ms = {
        stage: 1000 * batch.stage_seconds.get(stage, math.nan) for stage in KERNEL_SHARE_KEYS.values()
    }
    shares = ", ".join(
        f"{stage} {results.kernel_share(stage):.0%} ({ms:.0f} ms)" for stage, ms in stage_ms.items()
    )
    table.add_row(
        "kernel_share_<stage>",
        shares,
        "each stage of that batch against its own kernels replayed alone (the stage's time in the batch)",
    )
    table.add_row(
        "sgemm_ceiling_img_s",
        f"{ceiling.sgemm_img_s:.2f}",
        f"sgemm_gflops / model_gflop_per_img{workers_note(ceiling.processes)}",
    )
    bf16 = results.bf16
    if bf16 is not None:
        table.add_row(
            "service_img_s_bf16",
            f"{bf16.service_img_s:.3f}",
            f"CAPTIONER_DTYPE=bfloat16, same closed loop: {bf16.saturation.answered} answered",
        )
        table.add_row(
            "ceiling_share_bf16",
            f"{bf16.ceiling_share:.0%}",
            f"against the kernels in bfloat16: {bf16.ceiling.img_s:.2f} img/s"
            f"{workers_note(bf16.ceiling.processes)}",
        )
        table.add_row(
            "bf16_same_titles",
            str(bf16.same_titles),
            f"of {bf16.photos} photos titled as in float32, one at a time",
        )


def breakdown_table(breakdown: Breakdown) -> Table:
    """Where the time went at saturation: the workers' inference threads, their decode pools, the CPU."""
    table = Table(
        title=f"where the time goes at saturation ({breakdown.workers} worker(s), {breakdown.wall_s:.0f} s, "
        f"{breakdown.answered} answered, {breakdown.mean_batch():.1f} images a batch)"
    )
    table.add_column("where")
    table.add_column("ms/img", justify="right")
    table.add_column("share", justify="right")
    for stage in (*THREAD_STAGES, OTHER):
        table.add_row(
            f"worker: {stage}", f"{breakdown.ms_per_img(stage):.1f}", f"{breakdown.wall_share(stage):.0%}"
        )
    for stage in POOL_STAGES:
        table.add_row(f"decode pool: {stage}", f"{breakdown.ms_per_img(stage):.1f}", "")
    for role in CPU_ROLES:
        table.add_row(
            f"CPU: {role}", f"{breakdown.cpu_ms_per_img(role):.1f}", f"{breakdown.cores(role):.2f} cores"
        )
    return table


def _idle_table(results: BenchResults) -> Table:
    """Where an idle request's time goes, medians over the idle run."""
    idle, reference = results.idle, median(results.idle.reference_ms)
    e2e, api, inference = median(idle.e2e_ms), median(idle.api_ms), median(idle.inference_ms)
    prep = median(idle.reference_prep_ms)
    table = Table(title=f"idle request, {results.overhead_image.name} (medians of {len(idle.e2e_ms)})")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    table.add_row("client end-to-end", f"{e2e:.1f}")
    table.add_row("  HTTP + body read + JSON (client e2e - API latency_ms)", f"{e2e - api:.1f}")
    table.add_row("  API latency_ms (check, publish, wait for reply)", f"{api:.1f}")
    table.add_row(
        "    Kafka + queueing + decode/preprocess (latency_ms - inference_ms)", f"{api - inference:.1f}"
    )
    table.add_row("    worker inference_ms (model.caption of the batch)", f"{inference:.1f}")
    table.add_row("in-process: decode + preprocess", f"{prep:.1f}")
    table.add_row("in-process: decode + preprocess + caption", f"{reference:.1f}")
    table.add_row(
        "overhead_p50_ms (end-to-end - worker inference_ms - in-process decode + preprocess)",
        f"{results.overhead_p50_ms:.1f}",
    )
    table.add_row(
        "  cross-check: end-to-end - in-process (model timed in two processes)", f"{e2e - reference:.1f}"
    )
    return table


def capacity_table(
    capacity: CapacityResult, title: str = "capacity steps (tiny model, open loop, constant rate)"
) -> Table:
    table = Table(title=title)
    for column in (
        "offered/s",
        "achieved/s",
        "errors",
        "p50 ms",
        "p99 ms",
        "client CPU",
        "client lag ms",
        "pass",
    ):
        table.add_column(column, justify="right")
    for step in capacity.steps:
        table.add_row(
            f"{step.rate:.0f}",
            f"{step.achieved:.0f}",
            step.latency.errors_text,
            f"{step.latency.p50_ms:.1f}",
            f"{step.latency.p99_ms:.1f}",
            f"{step.client_cpu_share:.0%}",
            f"{step.max_lag_ms:.0f}",
            "yes" if step.passed else "no",
        )
    return table


def guarantees_table(guarantees: GuaranteeComparison) -> Table:
    """Each figure under both delivery guarantees, side by side (the JSON keys: *_eos, eos_*_ratio)."""
    table = Table(title="delivery guarantees side by side (CAPTIONER_DELIVERY_GUARANTEE, same run)")
    table.add_column("figure")
    for column in ("at_least_once", "exactly_once", "exactly once vs at least once"):
        table.add_column(column, justify="right")
    for row in guarantees.rows():
        table.add_row(*row)
    return table
