"""A stop that answers every caption request it took in.

On SIGTERM the listener closes first (aiohttp's runner: new connections are refused, idle keep-alive
connections closed). Then `drain_on_shutdown` (an on_shutdown hook, so before the Kafka clients close):
a caption request that still arrives on an open connection is answered 503 `shutting_down` with
`Connection: close`; those in flight go on until they end by themselves (a caption, or 504 at the
request timeout) or until the drain bound (CAPTIONER_API_SHUTDOWN_TIMEOUT_S, by default the request
timeout plus DRAIN_MARGIN_S), when each one left is answered 503 `shutting_down`. No request is dropped
without an answer, and nothing waits longer than the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from producer_api.appkeys import API_SETTINGS, DRAIN
from producer_api.errors import ShuttingDownError

log = logging.getLogger(__name__)

# What a request cut at the drain bound gets to write its 503.
CUT_ANSWER_S = 5.0
RETRY_AFTER_S = 1
PREDICTIONS_PREFIX = "/api/v1/predictions"  # the single and the batch route

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _stopping() -> ShuttingDownError:
    return ShuttingDownError("this instance is stopping; send the request again", retry_after_s=RETRY_AFTER_S)


class Drain:
    """The requests in flight, each in a cancel scope the stop can end at its bound."""

    def __init__(self) -> None:
        self.draining = False
        self._scopes: set[asyncio.Timeout] = set()
        self._settled = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._scopes)

    async def run(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.draining:
            raise _stopping()
        scope = asyncio.timeout(None)  # no deadline of its own: the stop may set one
        self._scopes.add(scope)
        try:
            async with scope:
                return await handler(request)
        except TimeoutError:
            if scope.expired():
                raise _stopping() from None
            raise
        finally:
            self._scopes.discard(scope)
            if not self._scopes:
                self._settled.set()

    async def drain(self, *, timeout_s: float) -> int:
        """Refuses new requests, waits up to timeout_s for those in flight, then ends the rest (each
        answers 503); returns how many were ended."""
        self.draining = True
        if not await self._settle(timeout_s):
            left = list(self._scopes)
            now = asyncio.get_running_loop().time()
            for scope in left:
                scope.reschedule(now)
            await self._settle(CUT_ANSWER_S)
            return len(left)
        return 0

    async def _settle(self, timeout_s: float) -> bool:
        if not self._scopes:
            return True
        self._settled.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._settled.wait()
        return not self._scopes


def drain_middleware(drain: Drain) -> Middleware:
    """Caption requests only: the other routes answer at once and are not worth a 503."""

    @web.middleware
    async def drained(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PREDICTIONS_PREFIX):
            return await handler(request)
        return await drain.run(request, handler)

    return drained


async def drain_on_shutdown(app: web.Application) -> None:
    drain, bound_s = app[DRAIN], app[API_SETTINGS].drain_timeout_s
    log.info("stopping: draining %d requests in flight (at most %g s)", drain.in_flight, bound_s)
    cut = await drain.drain(timeout_s=bound_s)
    if cut:
        log.warning("drained: %d requests still in flight at %g s were answered 503", cut, bound_s)
    else:
        log.info("drained: every request in flight was answered")
