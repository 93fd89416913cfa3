"""Prometheus metrics of the API."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("captioner_api_requests_total", "Caption requests answered", ["status"])
LATENCY = Histogram(
    "captioner_api_request_seconds",
    "End-to-end caption request latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("captioner_api_in_flight", "Caption requests waiting for a reply")
REPLIES_UNCLAIMED = Counter(
    "captioner_api_replies_unclaimed_total",
    "Replies read from this instance's reply partition that no request here was waiting for: another "
    "instance's (two instances on one partition), a duplicate, or one that came after its request timed out",
)
BATCHES = Counter("captioner_api_batch_requests_total", "Batch requests answered", ["status"])
BATCH_ITEMS = Counter("captioner_api_batch_items_total", "Batch items answered", ["status"])
