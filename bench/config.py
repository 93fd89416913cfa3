"""Run sizes of the full and the quick (BENCH_QUICK=1) benchmark, and the generation settings: the bench's
own knobs (BenchSettings, BENCH_* and WORKERS) and the worker's settings, each read with load_settings."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench.models import REPO
from core.settings import WorkerSettings, load_settings
from inference_consumer.batching import ARRIVAL_TIME_CONSTANT_S

BASE_CPU_BATCH = 16
STEADY_FRACTIONS = (0.3, 0.65, 0.9)  # the summary's p99_ms_30, p99_ms_65 (and p50/p95/p99_ms), p99_ms_90
# A saturation run follows a quiet spell, and a worker sizes its batches by the arrival rate it believes, an
# average over ARRIVAL_TIME_CONSTANT_S: two of them (86 % of the step believed) pass before its batches
# reach their cap, and what is measured after is the saturation the service keeps. Quick mode waits a
# quarter of that (~40 % believed): its figures are for a quick look, not to compare.
SATURATION_WARMUP_S = 2 * ARRIVAL_TIME_CONSTANT_S


@dataclass(frozen=True)
class Phases:
    """How long, or how many, for each measurement."""

    images: int  # test photos, 320x240 .. 4000x3000
    naive_budget_s: float  # the naive loop stops after this (having done at least 3 images)
    overhead_samples: int  # idle sequential requests, and in-process runs, of the overhead image
    saturation_warmup_s: (
        float  # closed-loop run at saturation: unmeasured first (see SATURATION_WARMUP_S) ...
    )
    saturation_s: float  # ... then measured at least ...
    saturation_min_rounds: int  # ... and this many full batches per worker past the first answers
    steady_s: float  # each open-loop run below saturation, at least ...
    steady_min_requests: int  # ... this many requests (longer at low rates), but at most ...
    steady_max_s: float  # ... this long
    steady_fractions: tuple[float, ...]  # of the measured service throughput, one run each
    repeat50_s: float  # closed-loop run with half the images repeated (caption cache), at least
    capacity_rates: tuple[int, ...]  # requests/s offered, one step each, until one fails
    capacity_step_s: float
    capacity_min_pace: float  # answers/s over offered/s a step needs (short steps need more slack)
    capacity_refinements: int  # bisection steps between the last passing and first failing rate


FULL = Phases(
    images=12,
    naive_budget_s=150.0,
    overhead_samples=15,
    saturation_warmup_s=SATURATION_WARMUP_S,
    saturation_s=90.0,
    saturation_min_rounds=3,
    steady_s=45.0,
    steady_min_requests=40,
    steady_max_s=90.0,
    steady_fractions=STEADY_FRACTIONS,
    repeat50_s=45.0,
    capacity_rates=(50, 100, 200, 300, 400, 500, 600, 700, 800, 1000, 1200, 1500, 2000),
    capacity_step_s=4.0,
    capacity_min_pace=0.95,
    capacity_refinements=2,
)
QUICK = Phases(
    images=4,
    naive_budget_s=30.0,
    overhead_samples=4,
    saturation_warmup_s=SATURATION_WARMUP_S / 4,
    saturation_s=20.0,
    saturation_min_rounds=1,
    steady_s=10.0,
    steady_min_requests=8,
    steady_max_s=20.0,
    steady_fractions=STEADY_FRACTIONS,
    repeat50_s=15.0,
    capacity_rates=(50, 100, 200, 400, 600, 800, 1000, 1500),
    capacity_step_s=2.0,
    capacity_min_pace=0.9,
    capacity_refinements=0,
)


@dataclass(frozen=True)
class ClosedLoopSize:
    """A closed-loop run's size: the requests it keeps in flight, and the answers it needs at least."""

    concurrency: int
    min_completions: int


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    phases: Phases
    max_new_tokens: int
    min_new_tokens: int
    workers: int
    worker_threads: int
    capacity_worker_threads: int
    batch_size: int  # the base model's batch at saturation, which sizes the closed loop
    run_id: str
    run_dir: Path
    # CAPTIONER_DELIVERY_GUARANTEE=exactly_once: the run's own services already are, nothing to compare with
    exactly_once: bool = False

    @property
    def saturation_concurrency(self) -> int:
        """One and a half batches per worker in flight: while a batch runs, half the next one is queued and
        its fill wait (CAPTIONER_BATCH_WAIT_SHARE) takes the rest from the answers' round trip. Two batches
        in flight closed that gap but gave no more images/s (decoding then overlaps inference on the same
        cores), and deeper queues only add latency."""
        return (self.batch_size + (self.batch_size + 1) // 2) * self.workers

    @property
    def saturation_loop(self) -> ClosedLoopSize:
        return ClosedLoopSize(self.saturation_concurrency, self.saturation_min_completions)

    @property
    def saturation_min_completions(self) -> int:
        """The first answers (filling the pipeline) plus `saturation_min_rounds` full batches per worker."""
        return (
            self.saturation_concurrency + self.phases.saturation_min_rounds * self.batch_size * self.workers
        )


class BenchSettings(BaseSettings):
    """`make bench`'s own knobs; the service's settings (CAPTIONER_*) pass through to its processes."""

    model_config = SettingsConfigDict(env_prefix="BENCH_", frozen=True, extra="ignore", env_ignore_empty=True)

    quick: bool = Field(default=False, description="fewer images, shorter load phases, same keys")
    min_new_tokens: int | None = Field(
        default=None,
        ge=0,
        le=512,
        description="every caption at least this long (the harness's worker); default: "
        "CAPTIONER_MAX_NEW_TOKENS, so every caption costs the same work",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="the base model's batch at saturation, which sizes the closed loop; default: what the "
        "worker's batching policy settles on for GIT-base on 2 CPU cores at the default "
        "CAPTIONER_BATCH_BUDGET_MS (BASE_CPU_BATCH; docs/performance.md), never more than "
        "CAPTIONER_MAX_BATCH_SIZE. Elsewhere set it to the batch the worker logs (`captioned N jobs`, "
        "at debug level) or its captioner_worker_batch_size metric",
    )
    workers: int = Field(default=1, ge=1, validation_alias=AliasChoices("WORKERS"), description="as make run")


def load_config() -> BenchConfig:
    """The run's configuration from the environment: BenchSettings and the worker's settings."""
    bench, worker = load_settings(BenchSettings), load_settings(WorkerSettings)
    run_id = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return BenchConfig(
        quick=bench.quick,
        phases=QUICK if bench.quick else FULL,
        max_new_tokens=worker.max_new_tokens,
        min_new_tokens=worker.max_new_tokens if bench.min_new_tokens is None else bench.min_new_tokens,
        workers=bench.workers,
        # As infra/run-local.sh: workers on one machine split its cores.
        worker_threads=worker.worker_threads or max(1, (os.cpu_count() or 1) // bench.workers),
        # The tiny model gains nothing from intra-op threads, and their OpenMP barriers spinning against the
        # API, broker and client for the same cores would make the capacity run measure that, not transport
        # (docs/performance.md).
        capacity_worker_threads=worker.worker_threads or 1,
        batch_size=bench.batch_size or min(worker.max_batch_size, BASE_CPU_BATCH),
        run_id=run_id,
        run_dir=REPO / ".local" / "bench" / run_id,
        exactly_once=worker.exactly_once,
    )


def worker_settings(**overrides: Any) -> WorkerSettings:
    """The worker's settings as the environment gives them (load_settings), with the bench's overrides
    (a model directory, a device), validated as the environment's are."""
    return WorkerSettings.model_validate(load_settings(WorkerSettings).model_dump() | overrides)
