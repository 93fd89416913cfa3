"""Prometheus metrics of the API and the middleware that counts every request (docs/metrics.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

UNMATCHED_ROUTE = "unmatched"
# Methods a client may send are any token; a label takes these or "other", so its values stay few.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# What a request whose client went away before the answer is counted as (nginx's convention).
CLIENT_CLOSED = "499"

REQUESTS = Counter(
    "captioner_api_requests_total",
    "HTTP requests answered, by route (the matched route's path, or 'unmatched'), method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "captioner_api_request_seconds",
    "HTTP request latency by route, from the request head to the answer",
    ["route"],
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
    "Caption-cache records skipped (unsigned or not signed by a verify key, malformed, oversized, under "
    "another key, an old version) or read errors",
    ["reason"],
)
CACHE_IGNORED = Counter(
    "captioner_api_cache_ignored_total",
    "Well-signed caption-cache entries this instance does not serve: another model profile, another scope",
    ["reason"],
)
REPLIES_UNCLAIMED = Counter(
    "captioner_api_replies_unclaimed_total",
    "Replies read from this instance's reply partition that no request here was waiting for: another "
    "instance's (two instances on one partition), a duplicate, or one that came after its request timed out",
)
BATCH_ITEMS = Counter("captioner_api_batch_items_total", "Batch items answered", ["status"])
WORKERS_ASSIGNED = Gauge(
    "captioner_api_workers_assigned",
    "Workers of the group that hold request-topic partitions, as the last readiness check saw them",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_label(request: web.Request) -> str:
    """The canonical path of the route that matched (`/static/{name}` style), never the URL a client sent,
    so that hostile paths cannot make new series."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def method_label(request: web.Request) -> str:
    return request.method if request.method in KNOWN_METHODS else "other"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: it sees the status the client gets, after the error middleware turned errors into JSON."""
    started = time.perf_counter()
    status = "500"
    try:
        response = await handler(request)
        status = str(response.status)
        return response
    except web.HTTPException as exc:  # redirects and the like, which the error middleware lets through
        status = str(exc.status)
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        route = route_label(request)
        REQUESTS.labels(route=route, method=method_label(request), status=status).inc()
        LATENCY.labels(route=route).observe(time.perf_counter() - started)
