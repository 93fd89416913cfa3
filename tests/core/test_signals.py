from __future__ import annotations

import signal
import threading

import pytest

from core.signals import relayed_signals

WAIT_S = 10.0
# A callback that cannot take its lock within this long is running where it never could: in the main
# thread, under the very `with lock:` the signal interrupted.
LOCK_PATIENCE_S = 2.0


class Recorder:
    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.lock = lock
        self.received: list[int] = []
        self.took_lock: list[bool] = []
        self.threads: list[str] = []
        self.done = threading.Event()
        self.expected = 1

    def __call__(self, signum: int) -> None:
        self.threads.append(threading.current_thread().name)
        if self.lock is not None:
            took = self.lock.acquire(timeout=LOCK_PATIENCE_S)
            self.took_lock.append(took)
            if took:
                self.lock.release()
        self.received.append(signum)
        if len(self.received) >= self.expected:
            self.done.set()


def test_a_signal_landing_inside_a_lock_its_callback_takes_is_handled_once_the_main_thread_lets_go() -> None:
    lock = threading.Lock()
    recorder = Recorder(lock)
    with relayed_signals(recorder):
        with lock:
            signal.raise_signal(signal.SIGTERM)  # its Python handler runs here, the lock held
        assert recorder.done.wait(WAIT_S)
    assert recorder.received == [signal.SIGTERM]
    assert recorder.took_lock == [True]
    assert recorder.threads == ["signal-relay"]


def test_signals_landing_inside_the_lock_are_each_handled_in_order() -> None:
    lock = threading.Lock()
    recorder = Recorder(lock)
    recorder.expected = 2
    with relayed_signals(recorder):
        with lock:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
        assert recorder.done.wait(WAIT_S)
    assert recorder.received == [signal.SIGINT, signal.SIGTERM]
    assert recorder.took_lock == [True, True]


def test_interrupt_on_repeat_raises_keyboard_interrupt_at_the_second_signal() -> None:
    recorder = Recorder()
    with relayed_signals(recorder, interrupt_on_repeat=True):
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        assert recorder.done.wait(WAIT_S)
    assert recorder.received == [signal.SIGINT]


def test_a_failing_callback_leaves_later_signals_answered() -> None:
    answered = threading.Event()
    calls: list[int] = []

    def on_signal(signum: int) -> None:
        calls.append(signum)
        if len(calls) == 1:
            raise RuntimeError("the first one fails")
        answered.set()

    with relayed_signals(on_signal):
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        assert answered.wait(WAIT_S)
    assert calls == [signal.SIGTERM, signal.SIGTERM]


def test_the_handlers_before_are_back_afterwards() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with relayed_signals(Recorder()):
        assert all(signal.getsignal(signum) != handler for signum, handler in before.items())
    assert {signum: signal.getsignal(signum) for signum in before} == before
    assert not any(thread.name == "signal-relay" for thread in threading.enumerate())


def test_a_signal_blocked_before_is_handled_once_the_handlers_are_in_place_and_the_mask_is_put_back() -> None:
    """A forked worker holds its stop signals blocked until its handlers are in place
    (inference_consumer/processes.py): one sent meanwhile waits, and reaches them."""
    recorder = Recorder()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        signal.raise_signal(signal.SIGTERM)  # pending while blocked
        with relayed_signals(recorder):
            assert recorder.done.wait(WAIT_S)
            assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    assert recorder.received == [signal.SIGTERM]
