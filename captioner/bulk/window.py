"""How many images a `--via kafka` run keeps in flight: a window that adapts, as TCP's does.

Through Kafka nothing pushes back: every request is accepted, and a window wider than the workers can
answer within a job's deadline only queues jobs that time out (a worker never starts a job past its
deadline). Little's law puts a job's round trip at the window over the service's rate, so the window
grows while answers come back well inside the deadline (`target_s`) and halves when one is late or
times out: doubling each round at first (slow start), then one more per window of answers (additive
increase). A halving counts once per round: answers from requests sent before the last halving say
nothing about the window since, so they do not halve it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

START_SIZE = 8
# A round trip over this share of the deadline is late: it leaves room for a slower batch or a retry.
TARGET_SHARE_OF_DEADLINE = 1 / 3

Observe = Callable[[float, bool], None]  # (round trip in seconds, timed out)


class AdaptiveWindow:
    def __init__(self, *, max_size: int, target_s: float, start_size: int = START_SIZE) -> None:
        self._max = float(max_size)
        self._target_s = target_s
        self.limit = float(max(1, min(start_size, max_size)))
        self.in_flight = 0
        self._slow_start = True
        self._round = 0  # advances at each halving
        self._changed = asyncio.Condition()

    @classmethod
    def for_deadline(cls, *, max_size: int, deadline_s: float) -> AdaptiveWindow:
        return cls(max_size=max_size, target_s=deadline_s * TARGET_SHARE_OF_DEADLINE)

    @property
    def size(self) -> int:
        return max(1, int(self.limit))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Observe]:
        """Waits for room in the window; the caller reports the request's round trip through what it gets."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.size)
            self.in_flight += 1
        try:
            yield partial(self._observe, self._round)
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    def _observe(self, sent_in_round: int, round_trip_s: float, timed_out: bool) -> None:
        if timed_out or round_trip_s > self._target_s:
            if sent_in_round == self._round:
                self.limit = max(1.0, self.limit / 2)
                self._slow_start = False
                self._round += 1
            return
        step = 1.0 if self._slow_start else 1.0 / self.limit
        self.limit = min(self._max, self.limit + step)
