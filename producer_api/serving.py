"""The HTTP server around the application: what every answer says about the server (nothing but its
name), plain JSON for the requests aiohttp refuses itself, and the serve loop that stops on a signal.

aiohttp answers a request it cannot parse (a bad request line, header or chunk) before any middleware
runs, with its parser's text (which quotes the request's bytes) and a `Server` header naming Python's
and aiohttp's versions. ApiRunner's request handler answers those with the JSON error body every other
error has, and every answer names the server SERVER_NAME only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web

log = logging.getLogger(__name__)

SERVER_NAME = "captioner"
# What aiohttp answers itself: a request it cannot parse, or a handler's failure past every middleware.
_OWN_WORDS = {
    HTTPStatus.BAD_REQUEST: ("malformed_request", "the request is not valid HTTP"),
    HTTPStatus.INTERNAL_SERVER_ERROR: ("internal_error", "internal error"),
}


def plain_error(status: int) -> web.Response:
    """The error body for a status, in words of our own or the status's standard phrase, never a
    library's text."""
    phrase = HTTPStatus(status).phrase
    code, message = _OWN_WORDS.get(HTTPStatus(status), (phrase.lower().replace(" ", "_"), phrase))
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    response.headers[hdrs.SERVER] = SERVER_NAME
    return response


async def name_the_server(_request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: set before aiohttp would fill in its own `Server` header."""
    response.headers[hdrs.SERVER] = SERVER_NAME


class PlainErrorRequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own logs the error and refuses once a response has begun; its answer is replaced.
        super().handle_error(request, status, exc, message)
        response = plain_error(status)
        response.force_close()
        return response


class PlainErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return PlainErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors with plain_error."""

    async def _make_server(self) -> web.Server:
        built = await super()._make_server()
        return PlainErrorServer(
            built.request_handler,
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **built._kwargs,
        )


async def serve(app: web.Application, *, host: str, port: int, **runner_args: Any) -> None:
    """Serves `app` until SIGINT or SIGTERM, then stops through the runner's cleanup: the listener
    closes, the app's on_shutdown hooks run (the drain), connections close, then its cleanup contexts.
    After the first signal, a SIGTERM is only logged: a supervisor may signal the process group and then
    each process (`make run` does), and that second one must not cut the drain short. A second SIGINT (an
    operator's Ctrl-C again) stops the process at once."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop_once, loop, stopping)
    runner = ApiRunner(app, **runner_args)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("serving on %s", site.name)
        await stopping.wait()
    finally:
        await runner.cleanup()


def _stop_once(loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
    loop.remove_signal_handler(signal.SIGINT)
    loop.add_signal_handler(signal.SIGTERM, log.info, "SIGTERM: already stopping")
    stopping.set()
