"""The API's HTTP surface in process: real routes, middleware and CaptionService, a fake publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.sync_api import Browser, sync_playwright
from prometheus_client import REGISTRY

from core.settings import ApiSettings, CacheSettings, ImageSettings, TopicSettings
from producer_api.app import ADMISSION, SERVICE, make_api_app
from producer_api.appkeys import CACHE_SETTINGS
from producer_api.cache import CachedCaptions
from producer_api.replies import PendingReplies
from producer_api.service import CaptionService
from producer_api.serving import SERVER_NAME, ApiRunner
from schemas import REQUEST_CODEC, CaptionReply, CaptionRequest, ReplyError, ReplyStatus

LIMIT = 64 * 1024
PREDICT = "/api/v1/predictions"
# What an error body must never show: a repr, a traceback, a server path, a library's words or version.
LEAKS = ("object at 0x", "Traceback", "/work/", 'File "', "Error:", "Exception", "Expecting", "aiohttp/")


@dataclass
class FakePublisher:
    """Answers every job at once, as a worker would: a caption, or the failure set in `answer`.
    `refusal` is raised instead, as the real publisher raises when the brokers are known to be down;
    `undelivered` is set on the job's future instead, as the real one does with a record the broker did
    not acknowledge; `replies` replaces the answer with the replies it returns for the job (none: the job
    waits)."""

    pending: PendingReplies
    published: list[CaptionRequest] = field(default_factory=list)
    headers: list[list[tuple[str, bytes]]] = field(default_factory=list)  # each published record's
    answer: ReplyError | None = None
    refusal: Exception | None = None
    undelivered: Exception | None = None
    replies: Callable[[CaptionRequest], list[CaptionReply]] | None = None
    held: list[CaptionReply] | None = None  # when a list, replies wait there until the test delivers them

    def send(
        self,
        *,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        failed: asyncio.Future[Any],
    ) -> None:
        if self.refusal is not None:
            raise self.refusal
        job = REQUEST_CODEC.decode(value)
        self.published.append(job)
        self.headers.append(list(headers or []))
        if self.undelivered is not None:
            asyncio.get_running_loop().call_soon(failed.set_exception, self.undelivered)
        elif self.replies is not None:
            self.pending.deliver(self.replies(job))
        elif self.held is not None:
            self.held.append(self._answer(job))
        else:
            self.pending.deliver([self._answer(job)])

    def _answer(self, job: CaptionRequest) -> CaptionReply:
        status = ReplyStatus.SUCCEEDED if self.answer is None else ReplyStatus.FAILED
        title = f"a picture of {len(job.image)} bytes" if self.answer is None else None
        return CaptionReply(job.correlation_id, status, "m", "w", title=title, error=self.answer)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ApiUnderTest:
    client: TestClient[web.Request, web.Application]
    publisher: FakePublisher

    @property
    def app(self) -> web.Application:
        return self.client.app  # type: ignore[return-value]

    @property
    def in_flight(self) -> int:
        return self.app[ADMISSION].in_flight

    @property
    def buffered_bytes(self) -> int:
        return self.app[ADMISSION].buffered_bytes

    async def post(self, body: bytes, content_type: str, **headers: str) -> Response:
        headers = {"Content-Type": content_type, **headers}
        async with self.client.post(PREDICT, data=body, headers=headers) as response:
            return Response(response.status, dict(response.headers), await response.read())

    async def open_raw(self, head: str, body: bytes = b"") -> RawConnection:
        """A connection that sends the request head (and some body) and then whatever the test says."""
        reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        return RawConnection(reader, writer)


@dataclass
class RawConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, deadline_s: float = 10.0) -> Response:
        async with asyncio.timeout(deadline_s):
            status_line = await self.reader.readline()
            headers: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Response(int(status_line.split()[1]), headers, body)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def request_head(content_type: str, content_length: int) -> str:
    return (
        f"POST {PREDICT} HTTP/1.1\nHost: test\nContent-Type: {content_type}\n"
        f"Content-Length: {content_length}\n"
    )


def in_flight_gauge() -> float:
    return REGISTRY.get_sample_value("captioner_api_in_flight") or 0.0


def assert_plain_error(response: Response, status: int | None = None, code: str | None = None) -> None:
    """A JSON error with a code and a plain message, and nothing from inside the server."""
    assert response.headers.get("Content-Type", response.headers.get("content-type", "")).startswith(
        "application/json"
    ), response
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    text = response.body.decode()
    assert not any(leak in text for leak in LEAKS), text
    assert_server_unnamed(response)
    if status is not None:
        assert response.status == status, (response.status, text)
    if code is not None:
        assert error["code"] == code, text


def assert_server_unnamed(response: Response) -> None:
    """No answer says which software (or version) serves it."""
    servers = [value for name, value in response.headers.items() if name.lower() == "server"]
    assert servers in ([], [SERVER_NAME]), servers


class ApiTestServer(TestServer):
    """A test server with the runner the API process runs (producer_api.serving)."""

    async def _make_runner(self, **kwargs: Any) -> ApiRunner:
        return ApiRunner(self.app, **kwargs)


StartApi = Callable[..., Awaitable[ApiUnderTest]]


@pytest.fixture
async def serve_api() -> AsyncIterator[StartApi]:
    clients: list[TestClient[web.Request, web.Application]] = []
    encoding = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-encode")

    async def start(
        *, cache: CachedCaptions | None = None, cache_settings: CacheSettings | None = None, **settings: Any
    ) -> ApiUnderTest:
        api = ApiSettings(**{"max_image_bytes": LIMIT, "instance_id": "test", **settings})
        app = make_api_app(api=api, images=ImageSettings(max_image_pixels=1_000_000))
        if cache_settings is not None:
            app[CACHE_SETTINGS] = cache_settings
        pending = PendingReplies()
        publisher = FakePublisher(pending)
        app[SERVICE] = CaptionService(
            api=api,
            topics=TopicSettings(),
            publisher=publisher,  # type: ignore[arg-type]
            pending=pending,
            reply_partition=0,
            cache=cache,
            executor=encoding,
        )
        client = TestClient(ApiTestServer(app))
        await client.start_server()
        clients.append(client)
        return ApiUnderTest(client, publisher)

    yield start
    for client in clients:
        await client.close()
    encoding.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, driven by Playwright (no browser download)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "chromium is not installed: run `make test-tools` as root, or `apt-get install chromium` "
            "(Debian's package; Playwright drives it, it downloads no browser)"
        )
    # Chromium's sandbox refuses to start as root.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=args)
        yield launched
        launched.close()
