"""The load client process against a stub API in another process."""

from __future__ import annotations

import io
import multiprocessing
import time
import urllib.request
from collections.abc import Iterator

import pytest
from aiohttp import web
from PIL import Image

from bench.load import ClosedLoop, LoadClient, OpenLoop, Sequential, Target, load_client, unique_jpeg
from tests.support.images import make_image_bytes
from tests.support.processes import free_port
from tests.support.waiting import wait_until

_ANSWER = {"id": "x", "title": "two words", "latency_ms": 2.5, "inference_ms": 1.5}


def _serve(port: int) -> None:
    seen: set[bytes] = set()

    async def predict(request: web.Request) -> web.Response:
        """Answers like the API with its caption cache: a body seen before is `cached`, unless bypassed."""
        body = await request.read()
        if body == b"overload":
            return web.json_response({"error": {"code": "overloaded"}}, status=429)
        cached = body in seen and request.headers.get("X-Captioner-Cache") != "bypass"
        seen.add(body)
        return web.json_response({**_ANSWER, "cached": cached})

    app = web.Application()
    app.router.add_post("/api/v1/predictions", predict)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    process.start()
    url = f"http://127.0.0.1:{port}/api/v1/predictions"

    def answers() -> bool:
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=b"x"), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(answers, timeout_s=30, message="the stub server never answered")
    yield url
    process.terminate()
    process.join(5)


@pytest.fixture(scope="module")
def client() -> Iterator[LoadClient]:
    with load_client() as running:
        yield running


def test_sequential_parses_answers(client: LoadClient, stub_url: str) -> None:
    run = client.run(Sequential(Target(stub_url, (b"a", b"b"), timeout_s=5), count=5))
    assert [outcome.status for outcome in run.outcomes] == [200] * 5
    first = run.outcomes[0]
    assert (first.api_latency_ms, first.inference_ms, first.words) == (2.5, 1.5, 2)
    assert all(
        earlier.done <= later.sent for earlier, later in zip(run.outcomes, run.outcomes[1:], strict=False)
    )


def test_closed_loop_stops_after_enough(client: LoadClient, stub_url: str) -> None:
    spec = ClosedLoop(
        Target(stub_url, (b"a",), timeout_s=5), concurrency=4, min_s=0.2, min_completions=50, max_s=10
    )
    run = client.run(spec)
    assert len(run.outcomes) >= 50
    assert run.wall_s < 10


def test_a_closed_loop_measures_only_after_its_warm_up(client: LoadClient, stub_url: str) -> None:
    spec = ClosedLoop(
        Target(stub_url, (b"a",), timeout_s=5),
        concurrency=4,
        min_s=0.2,
        min_completions=20,
        max_s=10,
        warmup_s=0.5,
    )
    events: list[tuple[str, float]] = []
    before = time.perf_counter()
    run = client.run(
        spec,
        on_measuring=lambda: events.append(("measuring", time.perf_counter())),
        on_measured=lambda: events.append(("measured", time.perf_counter())),
    )
    assert [event for event, _ in events] == ["measuring", "measured"]
    # asyncio's timers may end a sleep a millisecond early
    assert before + spec.warmup_s - 0.01 <= run.started <= events[0][1]
    assert run.started + spec.min_s <= run.finished <= events[1][1]
    assert len(run.measured) >= spec.min_completions
    assert all(run.started <= outcome.done <= run.finished for outcome in run.measured)
    # the loop ran through the warm-up: requests in flight as the window opened count in it
    assert min(outcome.sent for outcome in run.measured) < run.started
    assert min(outcome.done for outcome in run.outcomes) < run.started


def test_a_closed_loop_s_window_closes_before_its_drain(client: LoadClient, stub_url: str) -> None:
    spec = ClosedLoop(
        Target(stub_url, (b"a",), timeout_s=5), concurrency=8, min_s=0.1, min_completions=30, max_s=10
    )
    run = client.run(spec)
    drained = [outcome for outcome in run.outcomes if outcome.done > run.finished]
    assert drained  # the callers' last requests, answered after enough was counted
    assert len(run.measured) + len(drained) == len(run.outcomes)
    assert len(run.measured) >= spec.min_completions


def test_a_failing_callback_is_raised_after_the_run_and_the_client_stays_usable(
    client: LoadClient, stub_url: str
) -> None:
    def fail() -> None:
        raise OSError("the probe could not read")

    with pytest.raises(OSError, match="the probe could not read"):
        client.run(Sequential(Target(stub_url, (b"a",), timeout_s=5), count=3), on_measuring=fail)
    run = client.run(Sequential(Target(stub_url, (b"a",), timeout_s=5), count=2))
    assert [outcome.status for outcome in run.outcomes] == [200, 200]


def test_a_closed_loop_without_warm_up_is_measured_from_its_start(client: LoadClient, stub_url: str) -> None:
    spec = ClosedLoop(
        Target(stub_url, (b"a",), timeout_s=5), concurrency=2, min_s=0.1, min_completions=5, max_s=10
    )
    measuring: list[float] = []
    before = time.perf_counter()
    run = client.run(spec, on_measuring=lambda: measuring.append(time.perf_counter()))
    assert len(measuring) == 1
    assert before <= run.started <= measuring[0] < before + 1


def test_open_loop_keeps_its_schedule_and_counts_errors(client: LoadClient, stub_url: str) -> None:
    run = client.run(
        OpenLoop(Target(stub_url, (b"a", b"overload"), timeout_s=5), rate=200, duration_s=1.0, poisson=False)
    )
    assert len(run.outcomes) == 200
    assert sorted({outcome.status for outcome in run.outcomes}) == [200, 429]
    dues = [outcome.due for outcome in run.outcomes]
    assert dues[-1] - dues[0] == pytest.approx(0.995, abs=1e-6)
    assert run.max_lag_ms < 500


def test_unreachable_server_is_an_error_not_a_crash(client: LoadClient) -> None:
    run = client.run(Sequential(Target(f"http://127.0.0.1:{free_port()}/x", (b"a",), timeout_s=2), count=2))
    assert [outcome.status for outcome in run.outcomes] == [0, 0]


def test_a_unique_jpeg_is_other_bytes_of_the_same_picture() -> None:
    jpeg = make_image_bytes("JPEG", seed=5)
    first, second = unique_jpeg(jpeg, b"1"), unique_jpeg(jpeg, b"2")
    assert len({jpeg, first, second}) == 3
    pixels = [Image.open(io.BytesIO(data)).convert("RGB").tobytes() for data in (jpeg, first, second)]
    assert pixels[0] == pixels[1] == pixels[2]


def test_a_mixed_closed_loop_repeats_every_other_image(client: LoadClient, stub_url: str) -> None:
    jpeg = make_image_bytes("JPEG", seed=6)
    client.run(Sequential(Target(stub_url, (jpeg,), timeout_s=5), count=1))  # captioned once before
    spec = ClosedLoop(
        Target(stub_url, (jpeg,), timeout_s=5, fresh_every=2),
        concurrency=4,
        min_s=0.2,
        min_completions=100,
        max_s=10,
    )
    outcomes = client.run(spec).outcomes
    cached = sum(outcome.cached for outcome in outcomes)
    # Sent in order: fresh, repeated, fresh, ...; answers may finish in another order, the counts not.
    assert abs(cached - len(outcomes) / 2) <= spec.concurrency


def test_the_bypass_header_goes_with_every_request(client: LoadClient, stub_url: str) -> None:
    target = Target(stub_url, (b"bypassed",), timeout_s=5, headers=(("X-Captioner-Cache", "bypass"),))
    run = client.run(Sequential(target, count=3))
    assert [outcome.cached for outcome in run.outcomes] == [False, False, False]
