"""How big the next batch may grow and how long it waits to fill, learned from the batches already run.

A batch's cost is a fixed part (encoder and decoder launch, per-step overhead) plus a part per image. A
model whose fixed part dominates (a small one, or any on a GPU) gains from large batches; a slow one gains
little past a point and only makes everyone in the batch wait longer and holds more activation memory
(README, Architecture and Performance). So a batch grows only while the last batch's time per job says it
still ends within `budget_s`, up to `max_size`. `BatchCollector` takes each batch from the feeders' queue
as the policy says.
"""

from __future__ import annotations

import math
import queue
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass
class BatchPolicy:
    max_size: int
    budget_s: float  # 0: no time budget, max_size only
    wait_s: float
    wait_share: float
    last_size: int = 0  # jobs taken into the last batch
    last_inference_s: float = 0.0  # the last captioned batch's model time
    sizing_jobs: int = 0  # the batch the time per job is taken from: the largest recent one ...
    sizing_job_s: float = 0.0  # ... and its model time per job

    def limit(self) -> int:
        """The most jobs the next batch may take."""
        if self.budget_s <= 0 or self.sizing_job_s <= 0:
            return self.max_size
        return max(1, min(self.max_size, math.floor(self.budget_s / self.sizing_job_s)))

    def fill_wait_s(self) -> float:
        """An idle worker (last batch alone) answers a lone request at once. A busy one waits for company:
        wait_s, or wait_share of its last batch's inference when that is longer, so that a slow model
        (seconds a batch on CPU) fills its batches from requests still on their way, while a fast one
        adds little latency."""
        if self.last_size <= 1:
            return 0.0
        return max(self.wait_s, self.wait_share * self.last_inference_s)

    def backlog(self) -> int:
        """Jobs decoded ahead of the inference loop: the next batch and the one after. More would only
        hold jobs that a rebalance must wait for (or run twice)."""
        return 2 * self.limit()

    def took(self, size: int) -> None:
        self.last_size = size

    def captioned(self, size: int, inference_s: float) -> None:
        """Time per job falls as a batch grows (its fixed cost is shared), so it is taken from the largest
        batch so far, renewed by every batch at least that large or as large as the limit allowed: a
        lone job after a quiet spell does not shrink the next busy batch, and full batches keep
        following the model's speed both ways."""
        self.last_inference_s = inference_s
        if size >= min(self.sizing_jobs, self.limit()):
            self.sizing_jobs, self.sizing_job_s = size, inference_s / size


class BatchCollector(Generic[Item]):
    """Forms the inference loop's next batch from the jobs the feeders queued, as `policy` allows."""

    def __init__(self, ready: queue.Queue[Item], policy: BatchPolicy) -> None:
        self._ready = ready
        self._policy = policy

    def next_batch(self, *, first_wait_s: float = 0.1) -> list[Item]:
        """The first job waits up to first_wait_s, then whatever is queued joins it, up to the policy's
        limit, and the batch waits the policy's fill time for more. Empty when no job came."""
        return self._collect(first_wait_s=first_wait_s, fill=True)

    def drain(self) -> list[Item]:
        """At shutdown: what is queued now, up to the policy's limit, without waiting for more."""
        return self._collect(first_wait_s=0.0, fill=False)

    def _collect(self, *, first_wait_s: float, fill: bool) -> list[Item]:
        try:
            batch = [self._ready.get(timeout=first_wait_s) if first_wait_s else self._ready.get_nowait()]
        except queue.Empty:
            return []
        limit = self._policy.limit()
        until = time.monotonic() + (self._policy.fill_wait_s() if fill else 0.0)
        while len(batch) < limit:
            try:
                batch.append(self._ready.get_nowait())
            except queue.Empty:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self._ready.get(timeout=remaining))
                except queue.Empty:
                    break
        self._policy.took(len(batch))
        return batch
