"""How big the next batch may grow, how big it needs to be, and how long it waits to fill.

A batch's cost is a fixed part (encoder and decoder launch, per-step overhead) plus a part per image. A
model whose fixed part dominates (a small one, or any on a GPU) gains from large batches; a slow one gains
little past a point and only makes everyone in the batch wait longer and holds more activation memory
(docs/architecture.md, docs/performance.md). So:

- the *cap*: a batch grows only while the last batch's time per job says it still ends within `budget_s`,
  up to `max_size`;
- the *keep-up size*: the smallest batch whose throughput, by a cost model fitted to the batches already
  run (`BatchCost`), keeps up with the measured arrival rate (`ArrivalRate`) with some headroom. A batch
  waits for more jobs only while it is smaller than that, so at moderate load a request does not wait to
  fill a batch the worker does not need; at saturation the keep-up size is the cap, as before.

A batch always takes every job already queued, up to the cap: a backlog is drained as fast as the model
allows. `BatchCollector` takes each batch from the feeders' queue as the policy says. The policy reads no
clock: the collector passes the time in.
"""

from __future__ import annotations

import math
import queue
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")

KEEP_UP_HEADROOM = 1.2  # a batch size must serve this many times the arrival rate
ARRIVAL_TIME_CONSTANT_S = 20.0  # the arrival rate's memory: long enough to smooth Poisson noise
COST_WINDOW = 32  # batches the cost model is fitted to


def _usable(value: float) -> bool:
    return math.isfinite(value) and value > 0


@dataclass
class BatchCost:
    """A batch's model time as fixed_s + per_job_s * size, fitted to the last batches by Theil-Sen (the
    median of the slopes between pairs of batches of different sizes): one outlier batch (a GC pause, a
    noisy neighbour) moves neither part much. Timings that are not finite and positive are ignored."""

    window: int = COST_WINDOW
    observed: deque[tuple[int, float]] = field(default_factory=deque)

    def observe(self, size: int, seconds: float) -> None:
        if size < 1 or not _usable(seconds):
            return
        self.observed.append((size, seconds))
        while len(self.observed) > self.window:
            self.observed.popleft()

    def parts(self) -> tuple[float, float] | None:
        """(fixed_s, per_job_s), both >= 0 and not both 0; None before any batch. With batches of one
        size only, the fixed part cannot be told apart and counts as 0 (no gain from batching assumed)."""
        if not self.observed:
            return None
        observed = list(self.observed)
        slopes = [
            (seconds_b - seconds_a) / (size_b - size_a)
            for index, (size_a, seconds_a) in enumerate(observed)
            for size_b, seconds_b in observed[index + 1 :]
            if size_b != size_a
        ]
        if slopes:
            per_job = max(0.0, statistics.median(slopes))
            fixed = max(0.0, statistics.median(seconds - per_job * size for size, seconds in observed))
            if fixed > 0 or per_job > 0:
                return fixed, per_job
        return 0.0, statistics.median(seconds / size for size, seconds in observed)


@dataclass
class ArrivalRate:
    """Jobs per second entering the queue, as an exponentially time-weighted average. Arrivals between
    two looks are the jobs taken since plus the change in what is still queued."""

    time_constant_s: float = ARRIVAL_TIME_CONSTANT_S
    per_s: float = 0.0
    _since: float | None = None
    _queued: int = 0
    _pending: int = 0  # arrivals not yet folded into per_s (no time had passed)

    def observe(self, now: float, *, taken: int, queued: int) -> None:
        self._pending += max(0, taken + queued - self._queued)
        self._queued = max(0, queued)
        if self._since is None or not math.isfinite(now):
            self._since, self._pending = (now if math.isfinite(now) else None), 0
            return
        elapsed = now - self._since
        if elapsed <= 0:
            return
        weight = 1.0 - math.exp(-elapsed / self.time_constant_s)
        self.per_s += weight * (self._pending / elapsed - self.per_s)
        self._since, self._pending = now, 0


@dataclass
class BatchPolicy:
    max_size: int
    budget_s: float  # 0: no time budget, max_size only
    wait_s: float
    wait_share: float
    headroom: float = KEEP_UP_HEADROOM
    last_size: int = 0  # jobs taken into the last batch
    last_inference_s: float = 0.0  # the last captioned batch's model time
    sizing_jobs: int = 0  # the batch the time per job is taken from: the largest recent one ...
    sizing_job_s: float = 0.0  # ... and its model time per job
    cost: BatchCost = field(default_factory=BatchCost)
    arrivals: ArrivalRate = field(default_factory=ArrivalRate)

    def limit(self) -> int:
        """The most jobs the next batch may take (the cap)."""
        if self.budget_s <= 0 or self.sizing_job_s <= 0:
            return self.max_size
        return max(1, min(self.max_size, math.floor(self.budget_s / self.sizing_job_s)))

    def keep_up_size(self) -> int:
        """The smallest batch b with b / cost(b) >= headroom * arrival rate, within 1..limit(): solving
        b / (fixed + per_job * b) >= need gives b >= need * fixed / (1 - need * per_job). The cap when no
        size keeps up (saturation) or no batch has run yet under load."""
        cap, need = self.limit(), self.headroom * self.arrivals.per_s
        parts = self.cost.parts()
        if need <= 0:  # no arrivals: an idle worker answers a lone request at once
            return 1
        if parts is None or not math.isfinite(need):
            return cap
        fixed, per_job = parts
        spare = 1.0 - need * per_job
        smallest = need * fixed / spare if spare > 0 else math.inf
        if not smallest < cap:  # no size keeps up, or only the cap does
            return cap
        return max(1, math.ceil(smallest - 1e-9))

    def fill_wait_s(self) -> float:
        """The longest a batch smaller than the keep-up size waits for more: wait_s, or wait_share of the
        last batch's inference when that is longer, so that a slow model (seconds a batch on CPU) fills
        its batches from requests still on their way, while a fast one adds little latency."""
        return max(self.wait_s, self.wait_share * self.last_inference_s)

    def backlog(self) -> int:
        """Jobs decoded ahead of the inference loop: two batches at the cap. More would only hold jobs
        that a rebalance must wait for (or run twice)."""
        return 2 * self.limit()

    def took(self, size: int, *, queued: int, now: float) -> None:
        """A batch of `size` was taken (0: none came), leaving `queued` jobs in the queue, at `now`."""
        if size:
            self.last_size = size
        self.arrivals.observe(now, taken=size, queued=queued)

    def captioned(self, size: int, inference_s: float) -> None:
        """Time per job falls as a batch grows (its fixed cost is shared), so the cap's time per job is
        taken from the largest batch so far, renewed by every batch at least that large or as large as
        the cap allowed: a lone job after a quiet spell does not shrink the next busy batch, and full
        batches keep following the model's speed both ways. Every batch also feeds the cost model."""
        if size < 1 or not _usable(inference_s):
            return
        self.last_inference_s = inference_s
        self.cost.observe(size, inference_s)
        if size >= min(self.sizing_jobs, self.limit()):
            self.sizing_jobs, self.sizing_job_s = size, inference_s / size


class BatchCollector(Generic[Item]):
    """Forms the inference loop's next batch from the jobs the feeders queued, as `policy` allows."""

    def __init__(
        self, ready: queue.Queue[Item], policy: BatchPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ready = ready
        self._policy = policy
        self._clock = clock

    def next_batch(self, *, first_wait_s: float = 0.1) -> list[Item]:
        """The first job waits up to first_wait_s, then whatever is queued joins it, up to the policy's
        limit; while the batch is smaller than the policy's keep-up size it waits the policy's fill time
        for more. Empty when no job came."""
        return self._collect(first_wait_s=first_wait_s, fill=True)

    def drain(self) -> list[Item]:
        """At shutdown: what is queued now, up to the policy's limit, without waiting for more."""
        return self._collect(first_wait_s=0.0, fill=False)

    def _collect(self, *, first_wait_s: float, fill: bool) -> list[Item]:
        try:
            batch = [self._ready.get(timeout=first_wait_s) if first_wait_s else self._ready.get_nowait()]
        except queue.Empty:
            self._policy.took(0, queued=self._ready.qsize(), now=self._clock())
            return []
        limit = self._policy.limit()
        wanted = self._policy.keep_up_size() if fill else 1
        until = self._clock() + (self._policy.fill_wait_s() if fill else 0.0)
        while len(batch) < limit:
            try:
                batch.append(self._ready.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = until - self._clock()
            if len(batch) >= wanted or remaining <= 0:
                break
            try:
                batch.append(self._ready.get(timeout=remaining))
            except queue.Empty:
                break
        self._policy.took(len(batch), queued=self._ready.qsize(), now=self._clock())
        return batch
