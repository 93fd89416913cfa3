"""A stand-in for the captioner API, in process: an aiohttp server on its own thread and event loop, so
both async tests and the CLI (which runs its own event loop) can talk to it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

# (the image bytes, how many times these bytes were posted before) -> the answer
Script = Callable[[bytes, int], web.Response]


def titled(data: bytes, _seen: int) -> web.Response:
    """Every image gets its own bytes as its title; bytes starting b"bad" are not an image."""
    if data.startswith(b"bad"):
        return error(422, "invalid_image", "the bytes are not an image")
    return web.json_response({"id": "id-" + data.decode(errors="replace"), "title": data.decode()})


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@dataclass
class FakeApi:
    url: str = ""
    script: Script = titled
    posts: list[bytes] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        data = await request.read()
        seen = self.posts.count(data)
        self.posts.append(data)
        self.content_types.append(request.content_type)
        self.authorizations.append(request.headers.get("Authorization"))
        return self.script(data, seen)


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    app = web.Application()
    app.router.add_post("/api/v1/predictions", api.handle)
    runner = web.AppRunner(app)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        api.url = f"http://127.0.0.1:{port}"
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert started.wait(10), "the stand-in API did not start"
    yield api
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
