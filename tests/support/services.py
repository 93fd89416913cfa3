"""Real `captioner api` / `captioner worker` processes for integration tests, through the same process
helper the benchmarks use."""

from __future__ import annotations

import os
from collections.abc import Mapping

from tests.support.processes import CAPTIONER, ApiProcess, ServiceProcess, free_port, spawn, spawn_api

__all__ = ["CAPTIONER", "ApiProcess", "ServiceProcess", "free_port", "service_env", "spawn", "spawn_api"]


def service_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    return {**os.environ, **base, **overrides}
