"""POST /api/v1/predictions:batch: several images in one request, each its own job.

The batch is admitted like one request (one slot, and what parsing its whole body holds out of the
byte budget: a multiple of the body, payload.plan_batch_body; both before the body is read). The body
is split into items off the event loop; each item is then checked on the request executor and
published as its own job, all at once, so the jobs spread over the workers' partitions. The answer
lists one result per item, in input order: the single endpoint's body with "status": 200, or
{"status": <4xx/5xx>, "error": {...}}. A well-formed batch is a 200 even when items fail; a malformed
one (not JSON or multipart, no images, too many) is a 4xx.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from aiohttp import web

from core.errors import CaptionerError
from producer_api import metrics
from producer_api.appkeys import API_SETTINGS, IMAGE_SETTINGS, REQUEST_EXECUTOR, SERVICE
from producer_api.errors import error_body, http_status
from producer_api.intake import admitted_body
from producer_api.payload import batch_images, checked_upload, plan_batch_body
from producer_api.scoping import request_scope

BATCH_PATH = "/api/v1/predictions:batch"


async def predict_batch(request: web.Request) -> web.Response:
    """Requests by status and their latency are counted by the metrics middleware, on this route."""
    metrics.IN_FLIGHT.inc()
    try:
        return web.json_response({"results": await _admitted_batch(request)})
    finally:
        metrics.IN_FLIGHT.dec()


async def _admitted_batch(request: web.Request) -> list[dict[str, Any]]:
    app = request.app
    api = app[API_SETTINGS]
    plan = plan_batch_body(request, max_batch_bytes=api.max_batch_bytes)
    async with admitted_body(request, plan) as (ticket, body):
        items = await asyncio.get_running_loop().run_in_executor(
            app[REQUEST_EXECUTOR],
            functools.partial(
                batch_images, body, plan, max_items=api.max_batch_items, max_image_bytes=api.max_image_bytes
            ),
        )
        del body  # the images are what is held from here on
        ticket.shrink_to(sum(len(item) for item in items if isinstance(item, bytes)))
        scope = request_scope(request)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_caption_item(app, item, scope=scope)) for item in items]
        return [task.result() for task in tasks]


async def _caption_item(app: web.Application, item: bytes | CaptionerError, *, scope: str) -> dict[str, Any]:
    """One item's result; its errors are its own (anything else is a bug and fails the batch: 500)."""
    try:
        if isinstance(item, CaptionerError):
            raise item
        upload = await asyncio.get_running_loop().run_in_executor(
            app[REQUEST_EXECUTOR],
            functools.partial(checked_upload, item, max_pixels=app[IMAGE_SETTINGS].max_image_pixels),
        )
        del item
        result = await app[SERVICE].caption(upload, scope=scope)
    except CaptionerError as error:
        status = http_status(error)
        metrics.BATCH_ITEMS.labels(status=str(status)).inc()
        return {"status": status, **error_body(error)}
    metrics.BATCH_ITEMS.labels(status="200").inc()
    return {"status": 200, **result.body()}
