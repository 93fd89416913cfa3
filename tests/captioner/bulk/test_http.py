"""Over HTTP: answers become results; 429, 503 broker_unavailable and lost connections are retried with
backoff that honours Retry-After; other errors (503 caption_unavailable among them) are not retried."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from captioner.bulk.files import ImageFile
from captioner.bulk.http import Backoff, HttpBackend, parse_retry_after
from tests.captioner.bulk.conftest import FakeApi, error, titled

BACKOFF = Backoff(attempts=4, base_s=0.5, cap_s=8.0)


class Waits:
    """Stands in for asyncio.sleep: records each backoff instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


def image(data: bytes = b"photo") -> ImageFile:
    return ImageFile("/images/photo.jpg", data, "image/jpeg")


def backend(session: aiohttp.ClientSession, url: str, waits: Waits) -> HttpBackend:
    return HttpBackend(session, api_url=url, backoff=BACKOFF, rng=random.Random(1), sleep=waits)


def busy_then_titled(status: int, code: str, *, busy_times: int, **headers: str) -> object:
    def script(data: bytes, seen: int) -> web.Response:
        if seen < busy_times:
            return error(status, code, "busy", **headers)
        return titled(data, seen)

    return script


async def test_a_200_is_a_captioned_result(fake_api: FakeApi, session: aiohttp.ClientSession) -> None:
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image())

    assert result.ok
    assert (result.title, result.id, result.path) == ("photo", "id-photo", "/images/photo.jpg")
    assert fake_api.content_types == ["image/jpeg"]
    assert waits.delays == []


@pytest.mark.parametrize(("status", "code"), [(429, "overloaded"), (503, "broker_unavailable")])
async def test_429_and_503_are_retried_no_sooner_than_retry_after(
    fake_api: FakeApi, session: aiohttp.ClientSession, status: int, code: str
) -> None:
    fake_api.script = busy_then_titled(status, code, busy_times=2, **{"Retry-After": "3"})  # type: ignore[assignment]
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image())

    assert result.ok, result
    assert len(fake_api.posts) == 3
    assert len(waits.delays) == 2
    assert all(delay >= 3.0 for delay in waits.delays)


async def test_without_retry_after_the_backoff_grows_with_full_jitter(
    fake_api: FakeApi, session: aiohttp.ClientSession
) -> None:
    fake_api.script = busy_then_titled(503, "broker_unavailable", busy_times=3)  # type: ignore[assignment]
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image())

    assert result.ok
    ceilings = [0.5, 1.0, 2.0]
    assert all(0 <= delay <= ceiling for delay, ceiling in zip(waits.delays, ceilings, strict=True))


async def test_a_service_busy_on_every_try_fails_with_its_own_code(
    fake_api: FakeApi, session: aiohttp.ClientSession
) -> None:
    fake_api.script = busy_then_titled(429, "overloaded", busy_times=99, **{"Retry-After": "1"})  # type: ignore[assignment]
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image())

    assert not result.ok
    assert result.error == "overloaded"
    assert "4 tries" in (result.message or "")
    assert len(fake_api.posts) == BACKOFF.attempts


async def test_a_caption_unavailable_503_is_not_retried_its_job_is_already_dead_lettered(
    fake_api: FakeApi, session: aiohttp.ClientSession
) -> None:
    fake_api.script = busy_then_titled(503, "caption_unavailable", busy_times=99, **{"Retry-After": "1"})  # type: ignore[assignment]
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image())

    assert (result.error, result.message) == ("caption_unavailable", "busy")
    assert len(fake_api.posts) == 1
    assert waits.delays == []


async def test_a_503_without_a_retriable_code_is_not_retried(
    fake_api: FakeApi, session: aiohttp.ClientSession
) -> None:
    fake_api.script = lambda _data, _seen: web.Response(status=503, text="<html>down</html>")
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image())

    assert result.error == "http_503"
    assert len(fake_api.posts) == 1


async def test_any_other_client_error_fails_that_image_only(
    fake_api: FakeApi, session: aiohttp.ClientSession
) -> None:
    def redirect_loop(_data: bytes, _seen: int) -> web.Response:
        return web.Response(status=307, headers={"Location": "/api/v1/predictions"})

    fake_api.script = redirect_loop
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image())

    assert result.error == "request_failed"
    assert "TooManyRedirects" in (result.message or "")
    assert waits.delays == []


async def test_a_4xx_is_not_retried(fake_api: FakeApi, session: aiohttp.ClientSession) -> None:
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image(b"bad bytes"))

    assert (result.error, result.message) == ("invalid_image", "the bytes are not an image")
    assert len(fake_api.posts) == 1
    assert waits.delays == []


async def test_an_answer_without_a_json_error_is_named_by_its_status(
    fake_api: FakeApi, session: aiohttp.ClientSession
) -> None:
    fake_api.script = lambda _data, _seen: web.Response(status=404, text="<html>no</html>")
    waits = Waits()

    result = await backend(session, fake_api.url, waits).caption(image())

    assert (result.error, result.message) == ("http_404", "the API answered HTTP 404")


async def test_a_refused_connection_is_retried_then_listed(session: aiohttp.ClientSession) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    waits = Waits()

    result = await backend(session, f"http://127.0.0.1:{port}", waits).caption(image())

    assert result.error == "connection_failed"
    assert len(waits.delays) == BACKOFF.attempts - 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
        ("soon", None),
        (None, None),
        ("-3", None),
        ("\u00b2", None),
        ("\u0663", None),
        ("9" * 400, 1e9),
    ],
)
def test_retry_after_takes_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    assert parse_retry_after(header, now=now) == seconds


def test_a_huge_retry_after_is_capped() -> None:
    assert Backoff(max_retry_after_s=60).delay_s(0, 86_400, random.Random(0)) == 60
