"""A yardstick for the latency under load: the p99 an ideal batching worker would give, by simulation.

A worker's batch costs a fixed part plus a part per image. Both come from the bench's own figures: the
idle request's model time is a batch of one, and the saturation run's throughput gives the time per
image in full batches, so cost(b) = fixed + per_image * b with per_image = 1 / service_img_s and
fixed = idle model time - per_image. The simulated worker gets Poisson arrivals at a share of
service_img_s and starts a batch the moment it is free, with every request waiting (up to the cap): for
a cost of this shape no policy that does not interrupt a running batch does better at the tail, and
waiting to fill a batch only adds to it. What the service measures above this (transport, decoding, a
batch that is not the model's only work on the cores) is the service's own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SIMULATED_REQUESTS = 100_000


@dataclass(frozen=True)
class BatchCostModel:
    fixed_s: float
    per_image_s: float

    @classmethod
    def from_bench(cls, *, idle_inference_s: float, service_img_s: float) -> BatchCostModel | None:
        """None when the figures cannot make a cost (no throughput, or a batch of one cheaper than an
        image in a full batch)."""
        if service_img_s <= 0 or idle_inference_s <= 0:
            return None
        per_image_s = 1.0 / service_img_s
        fixed_s = idle_inference_s - per_image_s
        return cls(fixed_s, per_image_s) if fixed_s >= 0 else None

    def seconds(self, size: int) -> float:
        return self.fixed_s + self.per_image_s * size


def greedy_latencies_s(
    cost: BatchCostModel, *, rate: float, cap: int, requests: int = SIMULATED_REQUESTS, seed: int = 0
) -> list[float]:
    """Each request's time from arrival to the end of its batch, in arrival order."""
    arrivals_rng = random.Random(seed)
    arrivals, now = [], 0.0
    for _ in range(requests):
        now += arrivals_rng.expovariate(rate)
        arrivals.append(now)
    latencies: list[float] = []
    free_at, next_request = 0.0, 0
    while next_request < requests:
        start = max(free_at, arrivals[next_request])
        end_of_batch = next_request
        while (
            end_of_batch < requests and arrivals[end_of_batch] <= start and end_of_batch - next_request < cap
        ):
            end_of_batch += 1
        free_at = start + cost.seconds(end_of_batch - next_request)
        latencies.extend(free_at - arrivals[index] for index in range(next_request, end_of_batch))
        next_request = end_of_batch
    return latencies


def greedy_p99_s(cost: BatchCostModel, *, rate: float, cap: int) -> float:
    latencies = sorted(greedy_latencies_s(cost, rate=rate, cap=cap))
    return latencies[int(0.99 * len(latencies))]
