"""Service processes run as children (`captioner api`, `captioner worker`, ...): started with a log file,
watched, stopped with SIGTERM then a wait, their memory sampled; and processes as /proc shows them (a
session's members, whether one still runs). The integration tests, the benchmarks and `make chaos` all
start the service through this one module; it is harness, not service, so it lives with the tests' support
code, which the benchmarks import (never the other way round: pyproject.toml's import contracts)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

CAPTIONER = str(Path(sys.executable).parent / "captioner")
REPO = Path(__file__).resolve().parents[2]
# `captioner worker` with the harness's forced caption length and injected failures (HARNESS_*); it runs
# from the repository's root, as every process here does.
HARNESS_WORKER = (sys.executable, "-m", "tests.support.harness_worker")


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, which unwinds every ExitStack: service processes and brokers stop."""

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


# Where free_port looks: below Linux's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by
# default), from which the kernel gives every outgoing connection its local port, so that none can take
# the port between free_port's check and the service's bind; and above the fixed ports the suite's brokers
# use (TEST_KAFKA_PORT, 19092, up to ~20500: tests/support/broker.py).
FREE_PORTS = range(21000, 29000)
_FREE_PORT_TRIES = 200
_handed_out: set[int] = set()


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (as free_port's), for a process that serves on several
    in a row (CAPTIONER_WORKER_PROCESSES workers' metrics)."""
    for _ in range(_FREE_PORT_TRIES):
        first = random.choice(FREE_PORTS[: len(FREE_PORTS) - count + 1])
        ports = range(first, first + count)
        if not _handed_out.intersection(ports) and all(_bindable(port) for port in ports):
            _handed_out.update(ports)
            return first
    raise RuntimeError(f"no {count} free ports in a row in {FREE_PORTS} after {_FREE_PORT_TRIES} tries")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing is bound to on any interface, now, and not handed out before by this process (a
    test may ask for several before it binds any). Drawn at random from FREE_PORTS, so that processes
    asking at once seldom draw the same one."""
    for _ in range(_FREE_PORT_TRIES):
        port = random.choice(FREE_PORTS)
        if port in _handed_out or not _bindable(port):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {FREE_PORTS} after {_FREE_PORT_TRIES} tries")


class ChildProcess(Protocol):
    """What ServiceProcess needs of a child: subprocess.Popen, or tests/support/preloaded.py's fork."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, signum: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


@dataclass
class ServiceProcess:
    name: str
    popen: ChildProcess
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log_tail()}")

    def wait_for_log(self, text: str, *, timeout_s: float = 60.0) -> None:
        give_up = time.monotonic() + timeout_s
        while text not in self.log():
            self.check_alive()
            if time.monotonic() > give_up:
                raise TimeoutError(f"{self.name} did not log {text!r} in {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def wait_exit(self, *, timeout_s: float) -> int:
        return self.popen.wait(timeout_s)

    def stop(self, *, timeout_s: float = 60.0) -> int:
        """SIGTERM (a graceful stop for every captioner role), then wait; SIGKILL only past timeout_s."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()

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

    def uss_mb(self) -> float:
        """Private memory now (USS), in MiB; 0 once the process is gone. See `private_memory_mb`."""
        return private_memory_mb(self.pid)


def private_memory_mb(pid: int) -> float:
    """USS of a process, in MiB: Private_Clean + Private_Dirty of /proc/PID/smaps_rollup, the pages no
    other process maps (file pages shared with another process, such as memory-mapped weights, are not
    counted); 0 once the process is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    private_kb = sum(
        int(line.split()[1])
        for line in rollup.splitlines()
        if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )
    return private_kb / 1024


@dataclass
class ApiProcess(ServiceProcess):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def readiness(self) -> dict[str, Any]:
        """/readyz's body, 200 or 503 alike; empty while the API does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as refused:
            try:
                return dict(json.load(refused))
            except ValueError:
                return {}
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def ready(self, *, workers: bool = True) -> bool:
        """/readyz says ready; with workers=False, every check but the workers' passes (an API started
        before any worker, which /readyz keeps at 503)."""
        body = self.readiness()
        if workers:
            return body.get("status") == "ready"
        checks = body.get("checks") or {}
        return bool(checks) and all(check["ok"] for name, check in checks.items() if name != "workers")

    def wait_ready(self, *, timeout_s: float = 60.0, workers: bool = True) -> None:
        give_up = time.monotonic() + timeout_s
        while not self.ready(workers=workers):
            self.check_alive()
            if time.monotonic() > give_up:
                raise TimeoutError(f"{self.name} not ready in {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.2)


def exec_child(args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A fresh interpreter, in its own session, so a terminal's Ctrl-C reaches only the harness, which then
    stops the children in order; stdout and stderr go to log_path; run from the repository's root."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(args),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )


class ChildStarter(Protocol):
    def __call__(self, args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> ChildProcess: ...


def spawn(
    name: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    start: ChildStarter = exec_child,
) -> ServiceProcess:
    return ServiceProcess(name=name, popen=start(args, env=env, log_path=log_path), log_path=log_path)


def spawn_api(
    name: str,
    *,
    port: int,
    env: Mapping[str, str],
    log_path: Path,
    args: Sequence[str] = (CAPTIONER, "api"),
    start: ChildStarter = exec_child,
) -> ApiProcess:
    env = {**env, "CAPTIONER_API_PORT": str(port)}
    return ApiProcess(name=name, popen=start(args, env=env, log_path=log_path), log_path=log_path, port=port)


@dataclass
class RssPeak:
    """Peak of the summed resident memory of some processes."""

    processes: Sequence[ServiceProcess]
    peak_mb: float = 0.0

    def sample(self) -> None:
        self.peak_mb = max(self.peak_mb, sum(process.rss_mb() for process in self.processes))


class Measured(Protocol):
    def uss_mb(self) -> float: ...


@dataclass(frozen=True)
class ProcessById:
    """A process this one did not start (a worker a forking process made), known by its pid alone."""

    pid: int

    def uss_mb(self) -> float:
        return private_memory_mb(self.pid)


def children_of(pid: int) -> list[int]:
    """The processes `pid` started that still run (or are not yet reaped)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    children: list[int] = []
    for task in tasks:
        with suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return sorted(children)


@dataclass
class UssPeaks:
    """Each process's peak private memory (USS)."""

    processes: Sequence[Measured]
    peaks_mb: list[float] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        """The largest process's peak."""
        return max(self.peaks_mb, default=0.0)

    def sample(self) -> None:
        now = [process.uss_mb() for process in self.processes]
        self.peaks_mb = [max(pair) for pair in zip(self.peaks_mb or now, now, strict=True)]


@contextmanager
def sampled_on_a_thread(sample: Callable[[], object], *, interval_s: float, name: str) -> Iterator[None]:
    """Calls `sample` on entry, every `interval_s` on a thread of its own, and once more on exit."""
    sample()
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            sample()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sample()


@contextmanager
def rss_peak(processes: Sequence[ServiceProcess], *, interval_s: float = 0.25) -> Iterator[RssPeak]:
    peak = RssPeak(processes)
    with sampled_on_a_thread(peak.sample, interval_s=interval_s, name="rss-sampler"):
        yield peak


@contextmanager
def uss_peaks(processes: Sequence[Measured], *, interval_s: float = 0.5) -> Iterator[UssPeaks]:
    peaks = UssPeaks(processes)
    with sampled_on_a_thread(peaks.sample, interval_s=interval_s, name="uss-sampler"):
        yield peaks


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after "pid (command) "


def session_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[3]) if fields else None


def session_members(session: int) -> set[int]:
    return {pid for pid in all_pids() if session_of(pid) == session}


def running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"
