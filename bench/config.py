"""Run sizes of the full and the quick (BENCH_QUICK=1) benchmark, and the generation settings."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.models import REPO
from core.settings import WorkerSettings

FORCED_NEW_TOKENS = 20
BASE_CPU_BATCH = 16
STEADY_FRACTIONS = (0.3, 0.65, 0.9)  # the summary's p99_ms_30, p99_ms_65 (and p50/p95/p99_ms), p99_ms_90


@dataclass(frozen=True)
class Phases:
    """How long, or how many, for each measurement."""

    images: int  # test photos, 320x240 .. 4000x3000
    naive_budget_s: float  # the naive loop stops after this (having done at least 3 images)
    overhead_samples: int  # idle sequential requests, and in-process runs, of the overhead image
    saturation_s: float  # closed-loop run at saturation, at least ...
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


def _default_batch_size(env: Mapping[str, str]) -> int:
    """What the worker's batching policy settles on for GIT-base on 2 CPU cores at the default
    CAPTIONER_BATCH_BUDGET_MS (BASE_CPU_BATCH; docs/performance.md), never more than
    CAPTIONER_MAX_BATCH_SIZE. Elsewhere set BENCH_BATCH_SIZE to the batch the worker logs (`captioned N
    jobs`, at debug level) or its captioner_worker_batch_size metric."""
    limit = env.get("CAPTIONER_MAX_BATCH_SIZE") or WorkerSettings.model_fields["max_batch_size"].default
    return min(int(limit), BASE_CPU_BATCH)


def load_config(env: Mapping[str, str] = os.environ) -> BenchConfig:
    quick = env.get("BENCH_QUICK", "") not in ("", "0", "false", "no")
    max_new_tokens = int(env.get("CAPTIONER_MAX_NEW_TOKENS", FORCED_NEW_TOKENS))
    workers = max(1, int(env.get("WORKERS", "1")))
    run_id = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return BenchConfig(
        quick=quick,
        phases=QUICK if quick else FULL,
        max_new_tokens=max_new_tokens,
        # Forced length by default (min = max), so every caption costs the same work.
        min_new_tokens=int(env.get("CAPTIONER_MIN_NEW_TOKENS", max_new_tokens)),
        workers=workers,
        # As infra/run-local.sh: workers on one machine split its cores.
        worker_threads=int(env.get("CAPTIONER_WORKER_THREADS") or max(1, (os.cpu_count() or 1) // workers)),
        # The tiny model gains nothing from intra-op threads, and their OpenMP barriers spinning against the
        # API, broker and client for the same cores would make the capacity run measure that, not transport
        # (docs/performance.md).
        capacity_worker_threads=int(env.get("CAPTIONER_WORKER_THREADS") or 1),
        batch_size=int(env.get("BENCH_BATCH_SIZE") or _default_batch_size(env)),
        run_id=run_id,
        run_dir=REPO / ".local" / "bench" / run_id,
    )
