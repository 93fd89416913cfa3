"""Prometheus metrics of a worker."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS = Counter("captioner_worker_jobs_total", "Jobs by outcome", ["outcome"])
BATCH_SIZE = Histogram(
    "captioner_worker_batch_size", "Images per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64)
)
BATCH_SECONDS = Histogram(
    "captioner_worker_batch_seconds",
    "Inference time per batch",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
CACHE_WRITES = Counter(
    "captioner_worker_cache_writes_total",
    "Caption-cache entries: written (acknowledged), failed (refused), dropped (queue full, not sent)",
    ["result"],
)
