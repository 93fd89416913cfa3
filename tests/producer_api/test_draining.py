"""A stop in process: the caption requests in flight are answered, by their caption while the drain
lasts and by a 503 at its bound; a request that arrives while it drains is refused with a 503. The
process-level stop (SIGTERM, a real broker and worker) is tests/integration/test_stopping.py."""

from __future__ import annotations

import asyncio

from producer_api.appkeys import DRAIN
from producer_api.draining import Drain
from tests.producer_api.conftest import ApiUnderTest, Response, StartApi, assert_plain_error
from tests.support.images import make_image_bytes
from tests.support.waiting import wait_until_async

PNG = make_image_bytes("PNG")
IN_FLIGHT = 6


async def requests_in_flight(api: ApiUnderTest) -> tuple[Drain, list[asyncio.Task[Response]]]:
    """IN_FLIGHT requests whose jobs are published and whose replies are held back."""
    api.publisher.held = []
    calls = [asyncio.create_task(api.post(PNG, "image/png")) for _ in range(IN_FLIGHT)]
    await wait_until_async(lambda: len(api.publisher.held or []) == IN_FLIGHT, message="jobs not published")
    drain = api.app[DRAIN]
    assert drain.in_flight == IN_FLIGHT
    return drain, calls


async def test_requests_in_flight_get_their_captions_while_the_stop_drains(serve_api: StartApi) -> None:
    api = await serve_api()
    drain, calls = await requests_in_flight(api)

    stop = asyncio.create_task(drain.drain(timeout_s=600))
    await wait_until_async(lambda: drain.draining, message="the drain did not begin")
    late = await api.post(PNG, "image/png")
    api.publisher.pending.deliver(api.publisher.held or [])
    answers = await asyncio.gather(*calls)

    assert [answer.status for answer in answers] == [200] * IN_FLIGHT
    assert await stop == 0  # none cut
    assert_plain_error(late, 503, "shutting_down")
    assert late.headers["Connection"] == "close"
    assert late.headers["Retry-After"] == "1"
    assert len(api.publisher.published) == IN_FLIGHT  # the late one was never published


async def test_requests_still_in_flight_at_the_bound_are_answered_503(serve_api: StartApi) -> None:
    api = await serve_api()
    drain, calls = await requests_in_flight(api)

    cut = await drain.drain(timeout_s=0.1)
    answers = await asyncio.gather(*calls)

    assert cut == IN_FLIGHT
    for answer in answers:
        assert_plain_error(answer, 503, "shutting_down")
        assert answer.headers["Connection"] == "close"
    assert drain.in_flight == 0
    assert (api.in_flight, api.buffered_bytes) == (0, 0)  # admission slots given back


async def test_other_routes_are_not_refused_while_draining(serve_api: StartApi) -> None:
    api = await serve_api()

    assert await api.app[DRAIN].drain(timeout_s=1) == 0
    async with api.client.get("/healthz") as response:
        assert response.status == 200
