"""Several workers from one process: the imports made once, then each worker forked from them.

Before its first batch a worker holds ~450 MB of private memory that is the same in every worker: what
`import torch` (the PyPI CUDA wheel's libraries set up ~200 MB as they load) and transformers' GIT classes
build, and Python's modules. Workers forked from one process that has made those imports and nothing
else share those pages copy-on-write instead of holding a copy each (docs/performance.md, Several
workers per machine); `gc.freeze()` keeps the cyclic collector from writing to every shared object, which
would copy its page.

Forking is safe because the parent has run no torch op (OpenMP's pool), made no Kafka client and started
no thread of its own (numpy's OpenBLAS pool, started by its import, stops itself around a fork); each
child loads its model and connects on its own. The parent only waits: it passes SIGTERM and SIGINT on to
every child, and once any child exits it stops the others and ends with the first failing child's status
(0 when all stopped cleanly), so that whatever supervises it (systemd, Kubernetes, `make run`) sees one
process that fails as a whole.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from core.settings import WorkerSettings
from core.signals import STOP_SIGNALS, relayed_signals

log = logging.getLogger(__name__)

ServeOne = Callable[[WorkerSettings], None]
ExitStatus = Callable[[BaseException], int]


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

    An exception a child's `serve` raises ends it with `exit_status(exception)`. Returns the first failing
    child's status, 0 when every child stopped cleanly. Call it from the main thread of a process that has
    imported what the workers need and done nothing else."""
    cores = usable_cores()
    indexes = range(1, settings.worker_processes + 1)
    children: dict[int, str] = {}  # pid: worker id, while it runs
    stopping = threading.Event()

    def on_signal(signum: int) -> None:
        log.info("signal %d: passing it on to the %d workers", signum, len(children))
        stopping.set()
        _signal_all(list(children), signum)

    gc.collect()
    gc.freeze()
    with relayed_signals(on_signal):
        for index in indexes:
            if stopping.is_set():  # a stop signal came while they were starting
                break
            worker = child_settings(settings, index, cores=cores)
            children[_fork(serve, worker, exit_status)] = worker.worker_id
        log.info(
            "started %d workers: %s", len(children), ", ".join(f"{w} (pid {p})" for p, w in children.items())
        )
        return _supervise(children, stopping)


def _fork(serve: ServeOne, settings: WorkerSettings, exit_status: ExitStatus) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        status = _run_child(serve, settings, exit_status)
    finally:
        # Never back into the parent's frames: the exit functions an interpreter's exit runs (log and trace
        # flushes), then out.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _run_child(serve: ServeOne, settings: WorkerSettings, exit_status: ExitStatus) -> int:
    # The parent's handlers queue for its relay thread, which no fork copies: until the worker installs
    # its own, a stop signal ends this child at once (it holds no job yet).
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    try:
        serve(settings)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        return exit_status(exc)
    return 0


def _supervise(running: dict[int, str], stopping: threading.Event) -> int:
    """Wait for every child, taking each out of `running` as it exits; the first to exit stops the others
    (unless a signal already did)."""
    first_failure = 0
    while running:
        pid, wait_status = os.waitpid(-1, 0)
        worker_id = running.pop(pid, None)
        if worker_id is None:  # not one of ours
            continue
        status = exit_status_of(os.waitstatus_to_exitcode(wait_status))
        first_failure = first_failure or status
        if not stopping.is_set():
            log.warning("worker %s exited with status %d; stopping the others", worker_id, status)
            stopping.set()
            _signal_all(list(running), signal.SIGTERM)
    return first_failure


def exit_status_of(exitcode: int) -> int:
    """A child's status as a shell reports it: its exit status, or 128 + the signal that killed it."""
    return exitcode if exitcode >= 0 else 128 - exitcode


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, signum)
