"""Real `captioner api` / `captioner worker` processes for integration tests, through the same process
helper the benchmarks use; forked from a process that has already imported their libraries
(tests/support/preloaded.py) where their environment allows it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support import preloaded, processes
from tests.support.processes import CAPTIONER, ApiProcess, ServiceProcess, free_port

__all__ = ["CAPTIONER", "ApiProcess", "ServiceProcess", "free_port", "service_env", "spawn", "spawn_api"]


def service_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    return {**os.environ, **base, **overrides}


def spawn(name: str, args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> ServiceProcess:
    return processes.spawn(name, args, env=env, log_path=log_path, start=preloaded.start)


def spawn_api(
    name: str,
    *,
    port: int,
    env: Mapping[str, str],
    log_path: Path,
    args: Sequence[str] = (CAPTIONER, "api"),
) -> ApiProcess:
    return processes.spawn_api(name, port=port, env=env, log_path=log_path, args=args, start=preloaded.start)
