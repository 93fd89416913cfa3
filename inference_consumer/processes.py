"""Several workers from one process: the imports made once, then each worker forked from them.

Before its first batch a worker holds ~450 MB of private memory that is the same in every worker: what
`import torch` (the PyPI CUDA wheel's libraries set up ~200 MB as they load) and transformers' GIT classes
build, and Python's modules. Workers forked from one process that has made those imports and nothing
else share those pages copy-on-write instead of holding a copy each (docs/performance.md, Several
workers per machine); `gc.freeze()` keeps the cyclic collector from writing to every shared object, which
would copy its page.

Forking is safe because the parent has run no torch op (OpenMP's pool) and made no Kafka client; each
child loads its model and connects on its own. Its only threads are numpy's OpenBLAS pool (which stops
itself around a fork) and its signal relay, which forks never overlap: a child is forked, and a signal
passed on, under one lock. Stop signals stay blocked in a child from its fork until its worker has its
own handlers in place (core/signals.py unblocks them), so one sent meanwhile waits instead of being lost;
a child whose parent dies is killed (PR_SET_PDEATHSIG), so none outlives a supervisor's SIGKILL. The
parent only waits: it passes SIGTERM and SIGINT on to every child, and once any child exits it stops the
others and ends with the first failing child's status (0 when all stopped cleanly), so that whatever
supervises it (systemd, Kubernetes, `make run`) sees one process that fails as a whole.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from core.settings import WorkerSettings
from core.signals import STOP_SIGNALS, relayed_signals

log = logging.getLogger(__name__)

ServeOne = Callable[[WorkerSettings], None]
ExitStatus = Callable[[BaseException], int]
_PR_SET_PDEATHSIG = 1  # prctl(2)


def child_settings(settings: WorkerSettings, index: int, *, cores: int) -> WorkerSettings:
    """Worker `index` (from 1) of settings.worker_processes: its own id (`<worker_id>-<index>`, which also
    names its transactions), metrics port (the next ones up; 0 stays off) and the cores split between the
    workers unless CAPTIONER_WORKER_THREADS names a count."""
    count = settings.worker_processes
    return settings.model_copy(
        update={
            "worker_id": f"{settings.worker_id}-{index}",
            "metrics_port": settings.metrics_port + index - 1 if settings.metrics_port else 0,
            "worker_threads": settings.worker_threads or max(1, cores // count),
            "worker_processes": 1,
        }
    )


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_worker_processes(*, settings: WorkerSettings, serve: ServeOne, exit_status: ExitStatus) -> int:
    """Fork settings.worker_processes workers, each running `serve(its settings)`, and wait for them.

    `serve` must take the stop signals with core.signals.relayed_signals (run_worker does), which unblocks
    them in the child. An exception it raises ends the child with `exit_status(exception)`. Returns the
    first failing child's status, 0 when every child stopped cleanly. Call it from the main thread of a
    process that has imported what the workers need and done nothing else."""
    cores = usable_cores()
    family = _Family()

    def on_signal(signum: int) -> None:
        with family.lock:
            log.info("signal %d: passing it on to the %d workers", signum, len(family.running))
            family.stopping = True
            family.signal_all(signum)

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # waitpid must find them: never reaped for us
    gc.collect()
    gc.freeze()
    with relayed_signals(on_signal):
        for index in range(1, settings.worker_processes + 1):
            worker = child_settings(settings, index, cores=cores)
            with family.lock:
                if family.stopping:  # a stop signal came while they were starting
                    break
                family.running[_fork(serve, worker, exit_status)] = worker.worker_id
        log.info("started %d workers: %s", len(family.running), ", ".join(family.running.values()))
        return family.supervise()


@dataclass
class _Family:
    """The running children, by pid; `lock` is held to fork one, to signal them and to reap one, so that a
    signal never misses a child just forked nor reaches a pid already reaped (and perhaps reused)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: dict[int, str] = field(default_factory=dict)  # pid: worker id
    stopping: bool = False

    def signal_all(self, signum: int) -> None:
        for pid in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def supervise(self) -> int:
        """Wait for every child; the first to exit stops the others (unless a signal already did)."""
        first_failure = 0
        while self.running:
            # Which child ended, leaving it unreaped (its pid stays its own) until the lock is held.
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            if ended is None:
                continue
            with self.lock:
                _, wait_status = os.waitpid(ended.si_pid, 0)
                worker_id = self.running.pop(ended.si_pid, None)
                if worker_id is None:  # not one of ours
                    continue
                status = exit_status_of(os.waitstatus_to_exitcode(wait_status))
                first_failure = first_failure or status
                if not self.stopping:
                    log.warning("worker %s exited with status %d; stopping the others", worker_id, status)
                    self.stopping = True
                    self.signal_all(signal.SIGTERM)
        return first_failure


def _fork(serve: ServeOne, settings: WorkerSettings, exit_status: ExitStatus) -> int:
    """Forks a child that runs `serve`, its stop signals blocked until serve's handlers are in place."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return pid
    status = 1
    try:
        status = _run_child(serve, settings, exit_status, parent=parent)
    finally:
        # Never back into the parent's frames: the exit functions an interpreter's exit runs (log and trace
        # flushes), then out.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _run_child(serve: ServeOne, settings: WorkerSettings, exit_status: ExitStatus, *, parent: int) -> int:
    # Several forks write to one stderr: the main thread's name, in every log line, says whose line it is.
    threading.current_thread().name = settings.worker_id
    # The parent's handlers queue for its relay thread, which no fork copies: the worker installs its own.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    _die_with_parent()
    if os.getppid() != parent:  # it died before that took hold
        return 128 + signal.SIGKILL
    try:
        serve(settings)
    except SystemExit as exc:
        return _system_exit_status(exc)
    except BaseException as exc:
        return exit_status(exc)
    return 0


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux); nothing elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.info("this system cannot kill a worker whose parent died")


def _system_exit_status(exc: SystemExit) -> int:
    """As the interpreter ends on SystemExit: None is 0, a number itself, anything else printed and 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def exit_status_of(exitcode: int) -> int:
    """A child's status as a shell reports it: its exit status, or 128 + the signal that killed it."""
    return exitcode if exitcode >= 0 else 128 - exitcode
