"""Real `captioner api` / `captioner worker` processes for integration tests, through the same process
helper the benchmarks use; workers are forked from a process that has already imported their libraries
(tests/support/preloaded.py) where their environment allows it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support import preloaded
from tests.support.processes import CAPTIONER, ApiProcess, ServiceProcess, free_port, spawn_api
from tests.support.processes import spawn as spawn_exec

__all__ = ["CAPTIONER", "ApiProcess", "ServiceProcess", "free_port", "service_env", "spawn", "spawn_api"]


def service_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    return {**os.environ, **base, **overrides}


def spawn(name: str, args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> ServiceProcess:
    if not preloaded.forkable(args, env):
        return spawn_exec(name, args, env=env, log_path=log_path)
    forked = preloaded.fork(args, env=env, log_path=log_path)
    return ServiceProcess(name=name, popen=forked, log_path=log_path)
