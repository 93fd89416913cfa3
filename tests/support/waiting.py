"""Waiting on a condition with a deadline: the only way tests wait for something to happen.

A fixed sleep that hopes something happened in the meantime is flaky on a busy machine and slow on
an idle one; these poll the condition itself and fail with a message at the deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.1


def wait_until(
    condition: Callable[[], T],
    *,
    timeout_s: float,
    message: str | Callable[[], object],
    interval_s: float = POLL_INTERVAL_S,
) -> T:
    """Polls condition until it returns a truthy value, and returns that value. At the deadline it
    fails with message (a callable is called then, so it can show the state that was waited on)."""
    give_up = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() >= give_up:
            raise AssertionError(f"timed out after {timeout_s:g} s: {_text(message)}")
        time.sleep(interval_s)
    return result


async def wait_until_async(
    condition: Callable[[], T],
    *,
    timeout_s: float = 10.0,
    message: str | Callable[[], object] = "condition not met",
    interval_s: float = 0.01,
) -> T:
    """wait_until for a test on the event loop: the loop keeps serving while it polls."""
    give_up = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() >= give_up:
            raise AssertionError(f"timed out after {timeout_s:g} s: {_text(message)}")
        await asyncio.sleep(interval_s)
    return result


def _text(message: str | Callable[[], object]) -> str:
    return message if isinstance(message, str) else str(message())
