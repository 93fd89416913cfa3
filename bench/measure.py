"""The measurements made over HTTP against a running service, each driven by the load-client process."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bench.breakdown import Breakdown, BreakdownProbe
from bench.config import ClosedLoopSize, Phases
from bench.images import BenchImage
from bench.inprocess import ReferenceRun
from bench.load import ClosedLoop, LoadClient, LoadRun, OpenLoop, Outcome, Sequential, Target
from bench.service import Service
from bench.stats import LatencySummary, completion_rate, median

CLIENT_TIMEOUT_S = 180.0  # longer than the API's request timeout (bench.service), so a 504 is the API's
# Every phase but the repeated-images one sends the same few images again and again: each must reach a
# worker (the caption cache still gets its entries written, as in production).
BYPASS_CACHE = (("X-Captioner-Cache", "bypass"),)


def target(service: Service, images: Sequence[BenchImage], *, use_cache: bool = False) -> Target:
    return Target(
        url=service.predictions_url,
        payloads=tuple(image.data for image in images),
        timeout_s=CLIENT_TIMEOUT_S,
        headers=() if use_cache else BYPASS_CACHE,
    )


def words_per_title(outcomes: Sequence[Outcome]) -> float:
    words = [outcome.words for outcome in outcomes if outcome.words is not None]
    return sum(words) / len(words) if words else math.nan


def _run_checked(
    client: LoadClient,
    service: Service,
    spec: Sequential | ClosedLoop | OpenLoop,
    *,
    on_measuring: Callable[[], None] = lambda: None,
    on_measured: Callable[[], None] = lambda: None,
) -> LoadRun:
    run = client.run(spec, on_measuring=on_measuring, on_measured=on_measured)
    service.check_alive()
    return run


# ---- idle latency ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleResult:
    e2e_ms: list[float]  # client-measured, one request at a time
    api_ms: list[float]  # the API's own time for each (from the body: latency_ms)
    inference_ms: list[float]  # the worker's model time for each (from the body: inference_ms)
    reference_ms: list[float]  # the same work in-process, one run just before each request
    reference_prep_ms: list[float]  # ... of which JPEG decode + preprocess
    latency: LatencySummary
    words_per_title: float

    @property
    def outside_model_ms(self) -> list[float]:
        """Per request: end-to-end minus the worker's own model time for it."""
        return [e2e - model for e2e, model in zip(self.e2e_ms, self.inference_ms, strict=True)]

    @property
    def overhead_p50_ms(self) -> float:
        """What the service adds around the model: per request, end-to-end minus the worker's own model
        time, less the in-process decode + preprocess that the worker also does. Both model timings
        (worker and in-process) vary between runs by more than the overhead itself (docs/performance.md),
        so differencing them would drown it in noise; the model time is taken from the same request
        instead."""
        return median(self.outside_model_ms) - median(self.reference_prep_ms)


def measure_idle(
    client: LoadClient,
    service: Service,
    image: BenchImage,
    *,
    samples: int,
    reference: Callable[[], ReferenceRun],
) -> IdleResult:
    """Sequential requests of one image on an otherwise idle service, each right after one in-process run of
    the same work: both see the same machine, so background noise cancels out of their difference."""
    spec = Sequential(target=target(service, [image]), count=1)
    _run_checked(client, service, Sequential(target=spec.target, count=2))  # warm-up
    outcomes: list[Outcome] = []
    references: list[ReferenceRun] = []
    for _ in range(samples):
        references.append(reference())
        outcomes.extend(_run_checked(client, service, spec).outcomes)
    answered = [
        outcome
        for outcome in outcomes
        if outcome.ok and outcome.api_latency_ms is not None and outcome.inference_ms is not None
    ]
    return IdleResult(
        e2e_ms=[outcome.latency_ms for outcome in answered],
        api_ms=[outcome.api_latency_ms for outcome in answered if outcome.api_latency_ms is not None],
        inference_ms=[outcome.inference_ms for outcome in answered if outcome.inference_ms is not None],
        reference_ms=[run.total_ms for run in references],
        reference_prep_ms=[run.prep_ms for run in references],
        latency=LatencySummary.of(outcomes),
        words_per_title=words_per_title(answered),
    )


# ---- saturation throughput ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaturationResult:
    img_s: float
    concurrency: int
    answered: int
    wall_s: float
    latency: LatencySummary
    words_per_title: float
    client_cpu_share: float
    breakdown: Breakdown | None = None  # where the time went (measure_saturation)


def measure_saturation(
    client: LoadClient,
    service: Service,
    images: Sequence[BenchImage],
    *,
    size: ClosedLoopSize,
    phases: Phases,
    broker_pid: int | None = None,
) -> SaturationResult:
    """Closed loop at `concurrency`, measured after `phases.saturation_warmup_s` of the same load (the
    workers' arrival rate settles); throughput counts whole answered batches after the first (see
    stats.completion_rate), so neither the window's start nor a partial last batch skews it. The workers'
    stage seconds and every process's CPU time are read around the measured window (bench/breakdown.py);
    the broker's only when its pid is given."""
    spec = ClosedLoop(
        target=target(service, images),
        concurrency=size.concurrency,
        min_s=phases.saturation_s,
        min_completions=size.min_completions,
        max_s=4 * phases.saturation_s,
        warmup_s=phases.saturation_warmup_s,
    )
    pids = {"worker": [worker.pid for worker in service.workers], "api": [service.api.pid]}
    probe = BreakdownProbe(
        metrics_urls=service.worker_metrics_urls,
        pids=pids | ({"broker": [broker_pid]} if broker_pid is not None else {}),
    )
    result, _ = _closed_loop(client, service, spec, on_measuring=probe.start, on_measured=probe.stop)
    breakdown = probe.finish(answered=result.answered, client_cpu_s=result.client_cpu_share * result.wall_s)
    return replace(result, breakdown=breakdown)


def _closed_loop(
    client: LoadClient,
    service: Service,
    spec: ClosedLoop,
    *,
    on_measuring: Callable[[], None] = lambda: None,
    on_measured: Callable[[], None] = lambda: None,
) -> tuple[SaturationResult, list[Outcome]]:
    """The run's result, and its answered requests, both of its measured window."""
    run = _run_checked(client, service, spec, on_measuring=on_measuring, on_measured=on_measured)
    answered = [outcome for outcome in run.measured if outcome.ok]
    result = SaturationResult(
        img_s=completion_rate([outcome.done for outcome in answered]),
        concurrency=spec.concurrency,
        answered=len(answered),
        wall_s=run.wall_s,
        latency=LatencySummary.of(run.measured),
        words_per_title=words_per_title(answered),
        client_cpu_share=run.client_cpu_share,
    )
    return result, answered


# ---- latency below saturation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SteadyResult:
    fraction: float  # of the saturation throughput
    rate: float
    duration_s: float
    latency: LatencySummary
    max_lag_ms: float


def measure_steady(
    client: LoadClient,
    service: Service,
    images: Sequence[BenchImage],
    *,
    fraction: float,
    rate: float,
    phases: Phases,
) -> SteadyResult:
    """Open-loop Poisson arrivals at `rate`; latency counts from each request's due time."""
    duration = min(max(phases.steady_s, phases.steady_min_requests / rate), phases.steady_max_s)
    spec = OpenLoop(target=target(service, images), rate=rate, duration_s=duration, poisson=True, seed=1)
    run = _run_checked(client, service, spec)
    return SteadyResult(
        fraction=fraction,
        rate=rate,
        duration_s=duration,
        latency=LatencySummary.of(run.outcomes),
        max_lag_ms=run.max_lag_ms,
    )


def steady_at(levels: Sequence[SteadyResult], fraction: float) -> SteadyResult | None:
    """The run at `fraction` of the saturation throughput, if there was one."""
    return next((level for level in levels if math.isclose(level.fraction, fraction)), None)


# ---- saturation with repeated images (caption cache) ----------------------------------------------------


@dataclass(frozen=True)
class RepeatResult:
    saturation: SaturationResult
    cached: int  # answers that came from the caption cache


def measure_repeat50(
    client: LoadClient,
    service: Service,
    images: Sequence[BenchImage],
    *,
    size: ClosedLoopSize,
    phases: Phases,
) -> RepeatResult:
    """As measure_saturation, with the cache in use: every other request sends an image already captioned
    (the saturation run's photos), the others one never seen (a photo under new bytes: same work)."""
    spec = ClosedLoop(
        target=replace(target(service, images, use_cache=True), fresh_every=2),
        concurrency=size.concurrency,
        min_s=phases.repeat50_s,
        min_completions=size.min_completions,
        max_s=2 * phases.repeat50_s,
    )
    saturation, answered = _closed_loop(client, service, spec)
    return RepeatResult(saturation=saturation, cached=sum(outcome.cached for outcome in answered))


# ---- transport capacity (tiny model) --------------------------------------------------------------------


@dataclass(frozen=True)
class CapacityStep:
    rate: float  # offered, requests/s
    achieved: float  # answers/s over the span of the answers (see _capacity_step)
    latency: LatencySummary
    client_cpu_share: float  # the client's CPU over the step, in cores
    max_lag_ms: float  # how late the client sent its latest request
    min_pace: float  # achieved/offered needed to pass
    answers_by_worker: tuple[tuple[str, int], ...] = ()  # (worker_id, answers) of the step

    @property
    def passed(self) -> bool:
        """Sustained: every request answered 200, and answers kept pace with arrivals. A constant latency
        shifts the answers' span but does not stretch it; a growing backlog stretches it, and pulls
        `achieved` below the offered rate. The slack (1 - min_pace) absorbs answers coming in bursts."""
        return self.latency.errors == 0 and self.achieved >= self.min_pace * self.rate


@dataclass(frozen=True)
class CapacityResult:
    steps: list[CapacityStep]

    @property
    def capacity_rps(self) -> float:
        return max((step.rate for step in self.steps if step.passed), default=0.0)

    @property
    def sustained(self) -> CapacityStep | None:
        """The step at capacity_rps: the highest offered rate that passed."""
        return max((step for step in self.steps if step.passed), key=lambda step: step.rate, default=None)

    def answers_by_worker(self) -> Counter[str]:
        """Answers of every step, by the worker that gave them."""
        total: Counter[str] = Counter()
        for step in self.steps:
            total.update(dict(step.answers_by_worker))
        return total


def measure_capacity(
    client: LoadClient, service: Service, image: BenchImage, *, phases: Phases
) -> CapacityResult:
    """Step-up open-loop load at constant rates, until a step fails; then bisect between the last
    passing and the first failing rate."""
    spec_target = target(service, [image])
    _run_checked(client, service, OpenLoop(target=spec_target, rate=50, duration_s=1.0, poisson=False))
    steps: list[CapacityStep] = []
    for rate in phases.capacity_rates:
        steps.append(_capacity_step(client, service, spec_target, rate, phases))
        if not steps[-1].passed:
            break
    low = max((step.rate for step in steps if step.passed), default=0.0)
    high = min((step.rate for step in steps if not step.passed), default=math.inf)
    for _ in range(phases.capacity_refinements):
        if not (low and math.isfinite(high)) or high - low <= 20:
            break
        middle = round((low + high) / 2, -1)
        steps.append(_capacity_step(client, service, spec_target, middle, phases))
        low, high = (middle, high) if steps[-1].passed else (low, middle)
    return CapacityResult(steps=steps)


def _capacity_step(
    client: LoadClient, service: Service, spec_target: Target, rate: float, phases: Phases
) -> CapacityStep:
    spec = OpenLoop(target=spec_target, rate=rate, duration_s=phases.capacity_step_s, poisson=False)
    run = _run_checked(client, service, spec)
    time.sleep(0.5)  # let the service settle (commits, GC) before the next step
    answered = sorted(outcome.done for outcome in run.outcomes if outcome.ok)
    by_worker = Counter(outcome.worker_id for outcome in run.outcomes if outcome.ok and outcome.worker_id)
    span = answered[-1] - answered[0] if len(answered) > 1 else 0.0
    return CapacityStep(
        rate=rate,
        achieved=(len(answered) - 1) / span if span > 0 else 0.0,
        latency=LatencySummary.of(run.outcomes),
        client_cpu_share=run.client_cpu_share,
        max_lag_ms=run.max_lag_ms,
        min_pace=phases.capacity_min_pace,
        answers_by_worker=tuple(sorted(by_worker.items())),
    )


def steady_rate(saturation_img_s: float, fraction: float) -> float:
    """`fraction` of the saturation throughput; a token 0.1/s when that could not be measured."""
    if not math.isfinite(saturation_img_s) or saturation_img_s <= 0:
        return 0.1
    return saturation_img_s * fraction


# ---- the API's cost per request ---------------------------------------------------------------------------

API_COST_RATE = 100.0  # requests/s offered: well inside the tiny model's capacity on a small machine


@dataclass(frozen=True)
class ApiCost:
    """The API process's CPU time over an open loop at a fixed offered rate (tiny model, every feature
    as shipped: tracing, caption cache), per request answered; and its event loop's share (its main
    thread), with the context switches that thread made: each is a wake-up the request cost it."""

    rate: float
    requests: int
    answered: int
    api_cpu_s: float
    # A bare aiohttp server's CPU ms per request under the same loop (bench/api_floor.py); NaN: not measured
    floor_cpu_ms_per_request: float = math.nan
    loop_cpu_s: float = math.nan
    loop_switches: int = 0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.api_cpu_s / self.requests if self.requests else math.nan

    @property
    def loop_cpu_ms_per_request(self) -> float:
        return 1000 * self.loop_cpu_s / self.requests if self.requests else math.nan

    @property
    def loop_switches_per_request(self) -> float:
        return self.loop_switches / self.requests if self.requests else math.nan


def measure_api_cost(
    client: LoadClient, service: Service, image: BenchImage, *, duration_s: float, rate: float = API_COST_RATE
) -> ApiCost:
    """One small image, every request through the whole path (the cache-bypass header, as the other
    loops send it): the API still reads every cache entry the workers write, as shipped."""
    from bench.breakdown import cpu_seconds, thread_usage

    spec = OpenLoop(target=target(service, [image]), rate=rate, duration_s=duration_s, poisson=False)
    before, loop_before = cpu_seconds(service.api.pid), thread_usage(service.api.pid)
    run = _run_checked(client, service, spec)
    loop_after = thread_usage(service.api.pid)
    return ApiCost(
        rate=rate,
        requests=len(run.outcomes),
        answered=sum(outcome.ok for outcome in run.outcomes),
        api_cpu_s=cpu_seconds(service.api.pid) - before,
        loop_cpu_s=loop_after.cpu_s - loop_before.cpu_s,
        loop_switches=loop_after.switches - loop_before.switches,
    )
