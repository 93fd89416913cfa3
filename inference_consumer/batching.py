"""How big the next batch may grow and how long it waits to fill, learned from the batches already run.

A batch's cost is a fixed part (encoder and decoder launch, per-step overhead) plus a part per image. A
model whose fixed part dominates (a small one, or any on a GPU) gains from large batches; a slow one gains
little past a point and only makes everyone in the batch wait longer and holds more activation memory
(GIT-base on 2 CPU cores: 2.83 img/s at 16 and at 32, peak RSS 1.8 GB against 2.4 GB). So a batch grows
only while the last batch's time per job says it still ends within `budget_s`, up to `max_size`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
