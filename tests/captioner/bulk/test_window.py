"""The `--via kafka` window: slow start, halving once a round on a late or lost answer, additive growth
after, bounds; and a run through it keeps no more images in the backend than the window allows."""

from __future__ import annotations

import asyncio
from pathlib import Path

from captioner.bulk.files import ImageFile
from captioner.bulk.results import TIMEOUT, Result
from captioner.bulk.run import caption_all
from captioner.bulk.window import AdaptiveWindow
from tests.captioner.bulk.test_run import Recorded, Titles, files, named

TARGET_S = 10.0
FAST, LATE = 1.0, 11.0


async def answer(window: AdaptiveWindow, round_trips: list[float], *, timed_out: bool = False) -> None:
    """One round: all the requests enter the window, then each is answered with its round trip."""
    entered: list[None] = []
    all_in, answer_now = asyncio.Event(), asyncio.Event()

    async def request(round_trip: float) -> None:
        async with window.slot() as observe:
            entered.append(None)
            if len(entered) == len(round_trips):
                all_in.set()
            await answer_now.wait()
            observe(round_trip, timed_out)

    async with asyncio.TaskGroup() as requests:
        for round_trip in round_trips:
            requests.create_task(request(round_trip))
        await asyncio.wait_for(all_in.wait(), 10)
        answer_now.set()


async def test_it_starts_small_and_doubles_a_round_while_answers_are_fast() -> None:
    window = AdaptiveWindow(max_size=128, target_s=TARGET_S, start_size=8)

    await answer(window, [FAST] * 8)
    assert window.size == 16
    await answer(window, [FAST] * 16)
    assert window.size == 32


async def test_late_answers_of_one_round_halve_it_once_then_it_grows_one_a_round() -> None:
    window = AdaptiveWindow(max_size=128, target_s=TARGET_S, start_size=32)

    await answer(window, [LATE] * 20 + [FAST] * 12)
    assert 16 <= window.limit < 17  # twenty late answers, one halving; the fast ones add 1/16 each

    before = window.limit
    await answer(window, [FAST] * 16)
    assert 0.9 < window.limit - before < 1.0  # about one for a window of answers, no longer doubling


async def test_timeouts_shrink_it_to_one_and_no_further() -> None:
    window = AdaptiveWindow(max_size=128, target_s=TARGET_S, start_size=8)

    for _ in range(5):
        await answer(window, [FAST], timed_out=True)

    assert window.size == 1


async def test_it_never_grows_past_its_maximum() -> None:
    window = AdaptiveWindow(max_size=10, target_s=TARGET_S, start_size=8)

    await answer(window, [FAST] * 8)
    await answer(window, [FAST] * 10)

    assert window.size == 10


async def test_a_full_window_holds_the_next_request_until_one_answers() -> None:
    window = AdaptiveWindow(max_size=1, target_s=TARGET_S)
    first_in, second_in, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def request(entered: asyncio.Event) -> None:
        async with window.slot() as observe:
            entered.set()
            await release.wait()
            observe(FAST, False)

    first = asyncio.create_task(request(first_in))
    await asyncio.wait_for(first_in.wait(), 10)
    second = asyncio.create_task(request(second_in))
    for _ in range(20):
        await asyncio.sleep(0)  # lets the loop run the second request as far as it can go
    assert not second_in.is_set() and window.in_flight == 1

    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert second_in.is_set() and window.in_flight == 0


async def test_a_run_keeps_no_more_in_the_backend_than_the_window(tmp_path: Path) -> None:
    paths = files(tmp_path, {f"{index}.png": f"title {index}".encode() for index in range(20)})
    backend = Titles()
    backend.hold_until_in_flight = 3  # nothing is answered until three are in the backend
    sink = Recorded()
    window = AdaptiveWindow(max_size=3, target_s=TARGET_S, start_size=3)

    summary = await asyncio.wait_for(
        caption_all(named(paths), backend=backend, sink=sink, concurrency=16, max_bytes=100, window=window),
        10,
    )

    assert summary.captioned == 20 and backend.most_in_flight == 3


class TimingOut:
    async def caption(self, image: ImageFile) -> Result:
        return Result.failed(image.path, error=TIMEOUT, message="no reply")


async def test_a_run_whose_answers_time_out_narrows_its_window(tmp_path: Path) -> None:
    paths = files(tmp_path, {f"{index}.png": b"x" for index in range(30)})
    window = AdaptiveWindow(max_size=64, target_s=TARGET_S, start_size=16)

    summary = await asyncio.wait_for(
        caption_all(
            named(paths), backend=TimingOut(), sink=Recorded(), concurrency=64, max_bytes=100, window=window
        ),
        10,
    )

    assert summary.failed == 30 and window.size < 16
