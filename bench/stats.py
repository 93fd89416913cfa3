"""Percentiles and rates over load-client outcomes."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.load import Outcome


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass(frozen=True)
class LatencySummary:
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    error_statuses: tuple[tuple[int, int], ...] = ()  # (HTTP status or 0 for no answer, count)

    @property
    def errors_text(self) -> str:
        """e.g. "0" or "48 (504 x45, 429 x3)"."""
        if not self.errors:
            return "0"
        details = ", ".join(f"{status or 'no answer'} x{count}" for status, count in self.error_statuses)
        return f"{self.errors} ({details})"

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> LatencySummary:
        """Latency of the answered requests, from when each was due (open loop) or sent (closed loop)."""
        latencies = [outcome.latency_ms for outcome in outcomes if outcome.ok]
        failed = Counter(outcome.status for outcome in outcomes if not outcome.ok)
        return cls(
            requests=len(outcomes),
            errors=sum(not outcome.ok for outcome in outcomes),
            p50_ms=percentile(latencies, 50),
            p95_ms=percentile(latencies, 95),
            p99_ms=percentile(latencies, 99),
            max_ms=max(latencies, default=math.nan),
            error_statuses=tuple(sorted(failed.items())),
        )


def completion_rate(done_times: Sequence[float], *, burst_gap_s: float = 0.25) -> float:
    """Completions per second, counted from the end of the first burst of completions to the last one.

    A worker answers a whole batch at once, so completions come in bursts; counting from one burst's end to
    another's counts whole batches and nothing of a partial one. The first burst (warm-up, partial batches)
    is left out. Completions that stream without bursts are counted from the first to the last.
    """
    times = sorted(done_times)
    if len(times) < 2:
        return math.nan
    first_end = 0
    while first_end + 1 < len(times) and times[first_end + 1] - times[first_end] < burst_gap_s:
        first_end += 1
    if first_end >= len(times) - 1:  # one continuous stream, no bursts
        first_end = 0
    span = times[-1] - times[first_end]
    return (len(times) - 1 - first_end) / span if span > 0 else math.nan
