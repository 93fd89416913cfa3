"""Service processes forked from a process that has already imported torch, transformers and aiohttp.

A fresh `captioner worker` spends most of its start importing them, and the integration tests start
about a hundred workers and as many APIs. Here a multiprocessing forkserver imports them once per pytest
process, and each service is a fork of it that runs the same entry point as the console script
(`captioner.cli.main`, or a `python -m` module's `__main__`) with the test's environment, working
directory, session and log file. What runs is the service's own code from its entry point on; only the
imports are shared (an API fork has torch in memory, which the API never imports: the import contracts
and tests/test_packaging.py hold that).

The benchmarks and `make chaos` keep exec'ing fresh interpreters: they measure start-up and memory, which a
fork shares with its parent. A variable that a library reads when it is imported (HF_*, OMP_*,
PYTHONPATH, ...) cannot differ in a fork, so a command whose environment changes one is exec'd too.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

from tests.support.processes import CAPTIONER, REPO, ChildProcess, exec_child

# Imported once, in the forkserver, before any fork.
_PRELOAD = [
    "captioner.cli",
    "producer_api.app",
    "inference_consumer.worker",
    "inference_consumer.model",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.processing_auto",
    "transformers.models.git.modeling_git",
    "transformers.models.git.processing_git",
]
# Variables the service reads when it runs, not when it is imported, and ones it never reads (the chaos
# harness's own; torch's compile cache, which torch sets in the test's process when a test compiles): a
# fork may differ in them.
_NOT_READ_AT_IMPORT = (
    "CAPTIONER_",
    "HARNESS_",
    "KAFKA_BOOTSTRAP_SERVERS",
    "PYTEST_CURRENT_TEST",
    "CHAOS_",
    "KAFKA_CLUSTER_BASE_PORT",
    "TORCHINDUCTOR_CACHE_DIR",
)
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(_PRELOAD)


@functools.cache
def _forkserver_env() -> dict[str, str]:
    """Starts the forkserver, and returns the environment it started with (this process's, now)."""
    multiprocessing.forkserver.ensure_running()
    return dict(os.environ)


def start_forkserver() -> None:
    """tests/conftest.py starts it as the session starts, before any test sets a variable or starts a
    client thread: with the session's environment, whichever test first needs it."""
    _forkserver_env()


class ForkedChild:
    """The part of subprocess.Popen that ServiceProcess uses, over a forked multiprocessing.Process."""

    def __init__(self, process: BaseProcess, args: Sequence[str]) -> None:
        self._process = process
        self.args = list(args)

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if (code := self._process.exitcode) is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> ChildProcess:
    """Forked where `forkable`, else exec'd (processes.ChildStarter)."""
    if forkable(args, env):
        return fork(args, env=env, log_path=log_path)
    return exec_child(args, env=env, log_path=log_path)


def forkable(args: Sequence[str], env: Mapping[str, str]) -> bool:
    """`captioner worker|api ...` or `python -m tests.support.<module> ...`, in an environment that
    differs from the forkserver's only in variables read at run time."""
    command = list(args)
    is_service = command[:1] == [CAPTIONER] and command[1:2] in (["worker"], ["api"])
    is_support_module = command[:2] == [sys.executable, "-m"] and command[2].startswith("tests.support.")
    if not (is_service or is_support_module):
        return False
    started_with = _forkserver_env()
    changed = {name for name in env.keys() | started_with.keys() if env.get(name) != started_with.get(name)}
    return all(name.startswith(_NOT_READ_AT_IMPORT) for name in changed)


def fork(args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> ForkedChild:
    """As processes.exec_child starts `args`: its own session, stdout and stderr to log_path, the repository's
    root as its working directory."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()  # there from the start, as the log Popen's caller opens
    process = _CONTEXT.Process(
        target=_run, args=(list(args), dict(env), str(log_path)), name=Path(args[-1]).name, daemon=True
    )
    process.start()
    return ForkedChild(process, args)


def _run(args: list[str], env: dict[str, str], log_path: str) -> None:
    """In the fork: become what exec'ing `args` would have made, then run its entry point. A fork leaves
    through os._exit, so the exit functions the entry point registered (log and trace flushes) run here."""
    os.setsid()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(REPO)
    os.environ.clear()
    os.environ.update(env)
    try:
        if args[0] == CAPTIONER:
            sys.argv = ["captioner", *args[1:]]
            from captioner.cli import main

            main()
        else:
            sys.argv = [args[2], *args[3:]]
            runpy.run_module(args[2], run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()
