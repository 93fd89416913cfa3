"""Real `captioner api` / `captioner worker` processes for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.processes import CAPTIONER, free_port

REPO = Path(__file__).resolve().parents[2]

__all__ = ["CAPTIONER", "ApiProcess", "ServiceProcess", "free_port", "service_env"]


@dataclass
class ServiceProcess:
    role: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [CAPTIONER, self.role], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, *, timeout_s: float = 60) -> None:
        give_up = time.monotonic() + timeout_s
        while text not in self.log():
            if not self.alive():
                raise RuntimeError(f"{self.role} exited:\n{self.log()[-4000:]}")
            if time.monotonic() > give_up:
                raise TimeoutError(f"{self.role} never logged {text!r}:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def stop(self, *, timeout_s: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()


@dataclass
class ApiProcess(ServiceProcess):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, *, timeout_s: float = 60) -> None:
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            if not self.alive():
                raise RuntimeError(f"api exited:\n{self.log()[-4000:]}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"api not ready:\n{self.log()[-4000:]}")


def service_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    return {**os.environ, **base, **overrides}
