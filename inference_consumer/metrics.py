"""Prometheus metrics of a worker, served on CAPTIONER_WORKER_METRICS_PORT (docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# From a few milliseconds (a small model on a GPU, a reply acknowledged at once) to ten minutes (a backlog).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

JOBS = Counter(
    "captioner_worker_jobs_total",
    "Job attempts by outcome: succeeded, failed (permanent error: dead-lettered at once), retried, "
    "dead_lettered (transient errors outlasted every retry tier), expired (deadline passed, not run)",
    ["outcome"],
)
BATCH_SIZE = Histogram(
    "captioner_worker_batch_size", "Images per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
QUEUE_SECONDS = Histogram(
    "captioner_worker_queue_seconds",
    "From the request's created_at to the start of the batch that runs it",
    buckets=SECONDS_BUCKETS,
)
QUEUE_TIME_UNUSABLE = Counter(
    "captioner_worker_queue_time_unusable_total",
    "Jobs whose created_at could not give a queue time (in the future, or more than a day old): not observed",
    ["reason"],
)
DECODE_SECONDS = Histogram(
    "captioner_worker_decode_seconds", "Image decoding and preprocessing per job", buckets=SECONDS_BUCKETS
)
INFERENCE_SECONDS = Histogram(
    "captioner_worker_inference_seconds", "Model time per inference batch", buckets=SECONDS_BUCKETS
)
JOB_INFERENCE_SECONDS = Histogram(
    "captioner_worker_job_inference_seconds",
    "Each job's share of its batch's model time (batch time / batch size)",
    buckets=SECONDS_BUCKETS,
)
STAGE_SECONDS = Counter(
    "captioner_worker_stage_seconds_total",
    "Seconds spent in each stage of the work (inference_consumer/stages.py): the inference thread's and, "
    "apart, the decode pool's",
    ["stage"],
)
REPLY_SECONDS = Histogram(
    "captioner_worker_reply_seconds",
    "From producing a final reply to the broker's acknowledgement (exactly once: to the commit of its "
    "transaction)",
    buckets=SECONDS_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "captioner_worker_consumer_lag",
    "Records behind the partition's high watermark (librdkafka statistics), per assigned partition",
    ["topic", "partition"],
)
ASSIGNED_PARTITIONS = Gauge(
    "captioner_worker_assigned_partitions", "Partitions this worker's consumers hold", ["topic"]
)
DLQ_DEPTH = Gauge(
    "captioner_worker_dlq_depth",
    "Records in the dead-letter topic (high minus low watermark, summed over partitions)",
)
CACHE_WRITES = Counter(
    "captioner_worker_cache_writes_total",
    "Caption-cache entries: written (acknowledged), failed (refused), dropped (queue full, not sent), "
    "skipped (the job's cache-scope header is malformed)",
    ["result"],
)
TRANSACTIONS = Counter(
    "captioner_worker_transactions_total",
    "Exactly once: the worker's transactions, committed or aborted (their outcomes staged again, or, for "
    "a record that cannot be written, its fallback)",
    ["result"],
)
TRANSACTION_SECONDS = Histogram(
    "captioner_worker_transaction_seconds",
    "Exactly once: from a transaction's first record to its commit",
    buckets=SECONDS_BUCKETS,
)
