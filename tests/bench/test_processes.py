"""The memory samplers the bench reads worker memory with, on a real child process that grows and shrinks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import ServiceProcess, private_memory_mb, rss_peak, uss_peaks
from tests.support.waiting import wait_until

HELD_MB = 200
# Holds HELD_MB of written (so resident and private) memory until told to let go, then idles.
GROWS_THEN_SHRINKS = f"""
import sys
held = b"x" * ({HELD_MB} << 20)
print("holding", flush=True)
sys.stdin.readline()
del held
print("freed", flush=True)
sys.stdin.readline()
"""


@dataclass
class PipedChild(ServiceProcess):
    """A child the test talks to through its stdin and stdout."""

    pipes: subprocess.Popen[bytes] | None = None

    def read_line(self) -> str:
        assert self.pipes is not None and self.pipes.stdout is not None
        return self.pipes.stdout.readline().decode().strip()


@pytest.fixture
def child(tmp_path: Path) -> Iterator[PipedChild]:
    popen = subprocess.Popen(
        [sys.executable, "-c", GROWS_THEN_SHRINKS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    process = PipedChild(name="child", popen=popen, log_path=tmp_path / "unused.log", pipes=popen)
    yield process
    process.kill()
    assert popen.stdin is not None and popen.stdout is not None
    popen.stdin.close()
    popen.stdout.close()


def tell(process: PipedChild) -> str:
    assert process.pipes is not None and process.pipes.stdin is not None
    process.pipes.stdin.write(b"\n")
    process.pipes.stdin.flush()
    return process.read_line()


def test_the_samplers_keep_the_peak_after_memory_is_freed(child: PipedChild) -> None:
    with rss_peak([child], interval_s=0.05) as rss, uss_peaks([child], interval_s=0.05) as uss:
        assert child.read_line() == "holding"
        wait_until(lambda: uss.peak_mb >= HELD_MB and rss.peak_mb >= HELD_MB, timeout_s=30, message=uss)
        assert tell(child) == "freed"
        wait_until(lambda: child.uss_mb() < HELD_MB / 2, timeout_s=30, message=child.uss_mb)

    assert rss.peak_mb >= HELD_MB and uss.peaks_mb[0] >= HELD_MB


def test_a_process_that_is_gone_reads_as_no_memory(child: PipedChild) -> None:
    child.kill()

    assert (child.rss_mb(), child.uss_mb(), private_memory_mb(child.pid)) == (0.0, 0.0, 0.0)
