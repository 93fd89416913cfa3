"""All results of one run: the readable tables, and the one-line JSON summary printed last."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bench.ceiling import Ceiling
from bench.config import BenchConfig
from bench.gpu_phase import GpuResult
from bench.images import BenchImage
from bench.inprocess import DecoderCheck
from bench.measure import (
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

CONTINUITY_FRACTION = 0.65  # p50_ms, p95_ms and p99_ms are this run's, as in earlier versions
LEVEL_KEYS = {"p99_ms_30": 0.3, "p99_ms_65": 0.65, "p99_ms_90": 0.9}

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
    "worker_rss_mb",
    "uss_mb_per_worker",
    "decoder_identical",
    "sgemm_gflops",
    "model_gflop_per_img",
    "cpu_ceiling_img_s",
    "ceiling_share",
    "cpu_flags",
    "gpu_service_img_s",
    "gpu_inprocess_img_s",
    "gpu_p99_ms",
    "gpu_name",
)


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
    worker_rss_mb: float
    worker_uss_mb: list[float]  # each of two (or more) base-model workers' peak USS, running together
    ceiling: Ceiling
    wall_s: float
    gpu: GpuResult | None = None  # None without CUDA

    @property
    def overhead_p50_ms(self) -> float:
        """What the service adds around the model: per request, end-to-end minus the worker's own model
        time, less the in-process decode + preprocess that the worker also does. Both model timings
        (worker and in-process) vary between runs by more than the overhead itself (docs/performance.md),
        so differencing them would drown it in noise; the model time is taken from the same request
        instead."""
        return median(self.idle.outside_model_ms) - median(self.idle.reference_prep_ms)

    @property
    def idle_ms(self) -> float:
        """One image's end-to-end latency on the idle service: the median of the sequential requests."""
        return median(self.idle.e2e_ms)

    @property
    def ideal_p99_ms_65(self) -> float:
        """The p99 of an ideal batching worker at the 65% load (bench/queueing.py), plus what the idle
        request spent outside the model; NaN when the figures make no batch cost."""
        idle_model_ms = median(self.idle.inference_ms)
        cost = BatchCostModel.from_bench(
            idle_inference_s=idle_model_ms / 1000, service_img_s=self.saturation.img_s
        )
        if cost is None:
            return math.nan
        rate = steady_rate(self.saturation.img_s, CONTINUITY_FRACTION)
        p99_s = greedy_p99_s(cost, rate=rate, cap=self.config.batch_size)
        return 1000 * p99_s + (self.idle_ms - idle_model_ms)

    def latency_at(self, fraction: float) -> LatencySummary | None:
        level = steady_at(self.steady, fraction)
        return level.latency if level else None

    def summary(self) -> dict[str, float | bool | str | None]:
        continuity = self.latency_at(CONTINUITY_FRACTION)
        gpu = self.gpu
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
            "worker_rss_mb": self.worker_rss_mb,
            "uss_mb_per_worker": max(self.worker_uss_mb, default=math.nan),
            "decoder_identical": self.decoders.identical,
            "sgemm_gflops": self.ceiling.machine.sgemm_gflops,
            "model_gflop_per_img": self.ceiling.model_gflop_per_img,
            "cpu_ceiling_img_s": self.ceiling.img_s,
            "ceiling_share": self.ceiling.share(self.saturation.img_s),
            "cpu_flags": " ".join(self.ceiling.machine.flags),
            "gpu_service_img_s": gpu.service_img_s if gpu else None,
            "gpu_inprocess_img_s": gpu.inprocess_img_s if gpu else None,
            "gpu_p99_ms": gpu.p99_ms if gpu else None,
            "gpu_name": gpu.name if gpu else None,
        }
        return {key: _json_number(values[key]) for key in SUMMARY_KEYS}


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
    console.print(_steady_table(results))
    console.print(capacity_table(results.capacity))
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
    table.add_row(
        "worker_rss_mb", f"{results.worker_rss_mb:.0f}", "peak VmRSS, summed over workers, base run"
    )
    peaks = ", ".join(f"{peak:.0f}" for peak in results.worker_uss_mb)
    table.add_row(
        "uss_mb_per_worker",
        f"{max(results.worker_uss_mb, default=math.nan):.0f}",
        "peak private memory (USS) of the larger of the base-model workers running together at saturation "
        f"(each: {peaks} MB); shared weights not counted",
    )
    table.add_row(
        "decoder_identical",
        str(results.decoders.identical),
        f"fast decoder token ids == HF generate's, batch of 4, {config.max_new_tokens} tokens "
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
    table.add_row("cpu_ceiling_img_s", f"{ceiling.img_s:.2f}", "sgemm_gflops / model_gflop_per_img")
    table.add_row(
        "ceiling_share",
        f"{ceiling.share(results.saturation.img_s):.0%}",
        "service_img_s / cpu_ceiling_img_s: comparable across machines",
    )


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
