"""How long a worker's Kafka steps that wait on a broker may wait: a revoke waiting for its jobs' outcomes,
a flush, a commit, a consumer's close.

Each step waits at most `timeout_s` (CAPTIONER_WORKER_SHUTDOWN_TIMEOUT_S); once the worker is stopping, all
of them together wait at most that long from the stop; and none waits while no broker is reachable, since
nothing it waits for can then happen (docs/security.md, When a worker stops).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

# A flush or a close is waited for in slices this long, so that losing the last broker ends the wait.
WAIT_SLICE_S = 0.1


class Flushable(Protocol):
    def flush(self, timeout: float = ...) -> int: ...

    def __len__(self) -> int: ...


class Closable(Protocol):
    def close(self) -> None: ...


class KafkaWaits:
    """Thread-safe."""

    def __init__(
        self, *, timeout_s: float, reachable: Callable[[], bool], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._timeout_s = timeout_s
        self._reachable = reachable
        self._clock = clock
        self._stop_deadline: float | None = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        """From now on every step ends by timeout_s from now (the first call counts)."""
        with self._lock:
            if self._stop_deadline is None:
                self._stop_deadline = self._clock() + self._timeout_s

    def give_up_at(self, cap_s: float | None = None) -> float:
        """When a step starting now must end (by the clock given), at most cap_s from now."""
        now = self._clock()
        end = now + (self._timeout_s if cap_s is None else min(cap_s, self._timeout_s))
        with self._lock:
            return end if self._stop_deadline is None else min(end, self._stop_deadline)

    def stopping(self) -> bool:
        with self._lock:
            return self._stop_deadline is not None

    def left_s(self) -> float:
        """Seconds a step starting now may take, broker or not (0 once the stop's time is spent)."""
        return max(0.0, self.give_up_at() - self._clock())

    def reachable(self) -> bool:
        return self._reachable()

    def waiting(self, give_up: float) -> bool:
        """Whether a step that must end by give_up should wait on: time left and a broker to wait for."""
        return self._clock() < give_up and self._reachable()

    def flush(self, producer: Flushable, *, cap_s: float | None = None) -> int:
        """Delivers what the producer holds, while a broker is reachable and time is left; returns the
        records still undelivered."""
        give_up = self.give_up_at(cap_s)
        while len(producer) and self.waiting(give_up):
            producer.flush(min(WAIT_SLICE_S, max(0.0, give_up - self._clock())))
        return len(producer)

    def close(self, consumer: Closable, *, name: str) -> bool:
        """consumer.close() (its revoke callback, final commit, leaving the group) on a thread of its own,
        waited for as long as a step may wait: librdkafka's close takes no timeout, and one whose group
        coordinator went away during its final commit waits for a new one for ever. A close given up on
        is left to the process's exit. Returns whether the close ended."""

        def close() -> None:
            try:
                consumer.close()
            except Exception as exc:  # closed already, say: nothing left to wait for
                log.info("closing the %s consumer: %s", name, exc)

        closing = threading.Thread(target=close, name=f"close-{name}", daemon=True)
        closing.start()
        give_up = self.give_up_at()
        closing.join(WAIT_SLICE_S)
        while closing.is_alive() and self.waiting(give_up):
            closing.join(WAIT_SLICE_S)
        if closing.is_alive():
            log.warning(
                "gave up waiting for the %s consumer to close (%s); its group forgets it after the session "
                "timeout",
                name,
                "no broker reachable" if not self._reachable() else "shutdown time spent",
            )
            return False
        return True
