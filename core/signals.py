"""Stop signals handed to a thread of their own.

CPython runs a Python signal handler in the main thread, between two of its bytecodes: possibly inside a
`with lock:` of the very code the handler calls (a `threading.Lock`, an `Event`'s condition), or inside the
handler of an earlier signal (Ctrl-C sends SIGINT to a process group, and `make run` follows it with
SIGTERM). A handler that takes such a lock then waits for itself for ever. So the handler here only puts
the signal on a `queue.SimpleQueue`, whose `put` is safe in a signal handler, and a relay thread calls
`on_signal` with it, free to take any lock.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_RELAY_JOIN_S = 5.0
_DONE = -1  # not a signal number: tells the relay to end


@contextlib.contextmanager
def relayed_signals(
    on_signal: Callable[[int], None],
    *,
    signums: tuple[signal.Signals, ...] = STOP_SIGNALS,
    interrupt_on_repeat: bool = False,
) -> Iterator[None]:
    """While inside, each of `signums` calls `on_signal(signum)` on the relay thread, in arrival order.

    `interrupt_on_repeat`: a second signal raises KeyboardInterrupt in the main thread at once (what a
    user who presses Ctrl-C twice means), which takes no lock. Must be entered from the main thread. The
    signals are unblocked once the handlers are in place: a forked worker holds them blocked from its
    fork until here (inference_consumer/processes.py), so that one sent meanwhile is not lost. On the way
    out they are blocked while the earlier handlers are put back, then left blocked or not as they were
    before (a forked worker's stay blocked: a signal that comes as it ends does not kill it)."""
    received: queue.SimpleQueue[int] = queue.SimpleQueue()
    count = 0

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        if interrupt_on_repeat and count > 1:
            raise KeyboardInterrupt
        received.put(signum)

    relay = threading.Thread(target=_relay, args=(received, on_signal), name="signal-relay", daemon=True)
    previous: dict[signal.Signals, Any] = {}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        for signum in signums:
            previous[signum] = signal.signal(signum, handler)
        relay.start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, signums)
        try:
            for signum, earlier in previous.items():
                signal.signal(signum, earlier)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            received.put(_DONE)
            if relay.ident is not None:
                relay.join(_RELAY_JOIN_S)


def _relay(received: queue.SimpleQueue[int], on_signal: Callable[[int], None]) -> None:
    while (signum := received.get()) != _DONE:
        try:
            on_signal(signum)
        except Exception:  # one failed callback must not leave later signals unanswered
            log.exception("handling signal %d failed", signum)
