"""Child processes of the benchmark: started with a log file, stopped with SIGTERM then a wait."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench.models import REPO

CAPTIONER = str(Path(sys.executable).parent / "captioner")


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, which unwinds every ExitStack: service processes and brokers stop."""

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log_tail()}")

    def wait_for_log(self, text: str, *, timeout_s: float) -> None:
        give_up = time.monotonic() + timeout_s
        while text not in self.log_path.read_text(errors="replace"):
            self.check_alive()
            if time.monotonic() > give_up:
                raise TimeoutError(f"{self.name} did not log {text!r} in {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, *, timeout_s: float = 60.0) -> int:
        """SIGTERM (a graceful stop for every captioner role), then wait; SIGKILL only past timeout_s."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def rss_mb(self) -> float:
        """Resident memory now (VmRSS), in MiB; 0 once the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def spawn(name: str, args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> ManagedProcess:
    """Start args in its own session (so a terminal's Ctrl-C reaches only the harness, which then stops
    the children in order), with stdout and stderr going to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(args), env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


@dataclass
class RssPeak:
    """Peak of the summed resident memory of some processes, sampled on a thread."""

    processes: Sequence[ManagedProcess]
    interval_s: float = 0.25
    peak_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        self.peak_mb = max(self.peak_mb, sum(process.rss_mb() for process in self.processes))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


@contextmanager
def rss_peak(processes: Sequence[ManagedProcess]) -> Iterator[RssPeak]:
    peak = RssPeak(processes)
    peak.sample()
    thread = threading.Thread(target=peak._run, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        peak._stop.set()
        thread.join()
