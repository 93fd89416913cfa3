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
CACHE_HITS = Counter("captioner_api_cache_hits_total", "Requests answered from the caption cache")
CACHE_MISSES = Counter(
    "captioner_api_cache_misses_total", "Requests looked up in the caption cache and not found there"
)
CACHE_BYPASSED = Counter(
    "captioner_api_cache_bypassed_total", "Requests whose headers asked for a fresh caption (no look-up)"
)
CACHE_ENTRIES = Gauge("captioner_api_cache_entries", "Caption-cache entries held in memory")
CACHE_BYTES = Gauge("captioner_api_cache_bytes", "Estimated memory of the caption-cache entries held")
CACHE_READER_ERRORS = Counter(
    "captioner_api_cache_reader_errors_total",
    "Caption-cache records skipped (malformed, oversized, under another key) or read errors",
    ["reason"],
)
