"""What both predict handlers do before they parse: admission (429 with the body unread), then the body,
read within its bound and its deadline (408)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from producer_api.admission import Ticket
from producer_api.appkeys import ADMISSION, API_SETTINGS
from producer_api.errors import RequestTimeoutError
from producer_api.payload import BodyPlan, read_body


@asynccontextmanager
async def admitted_body(request: web.Request, plan: BodyPlan) -> AsyncIterator[tuple[Ticket, bytes]]:
    """The request's ticket and its body; the slot and bytes are held until the block ends, on any path.
    The reservation is shrunk to what the body read holds (plan.held). Nothing here keeps the body, so
    the caller's `del body` drops the last reference to it."""
    with request.app[ADMISSION].admit(plan.reserve) as ticket:
        yield ticket, await _read_within_deadline(request, plan, ticket)


async def _read_within_deadline(request: web.Request, plan: BodyPlan, ticket: Ticket) -> bytes:
    timeout_s = request.app[API_SETTINGS].body_read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            body = await read_body(request, limit=plan.limit)
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s") from None
    ticket.shrink_to(plan.held(len(body)))
    return body
