"""Several workers forked from one process (inference_consumer/processes.py): the parent's supervision,
with stand-in workers that only wait for a stop signal, in a process of their own (a fork of pytest's
would copy its threads' state). The real worker under it, against a broker: tests/integration."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import WorkerSettings
from inference_consumer.processes import child_settings, exit_status_of
from tests.support.processes import running
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
STOP_S = 30.0
STAND_IN_WORKERS = """
import os, signal, sys
from core.settings import WorkerSettings
from inference_consumer.processes import run_worker_processes

behaviour = sys.argv[1]
STOPS = {signal.SIGTERM, signal.SIGINT}

def serve(settings):
    # The stop signals are blocked from the fork: sigwait takes them as they come.
    print(f"started {settings.worker_id} pid={os.getpid()} ppid={os.getppid()} "
          f"threads={settings.worker_threads} port={settings.metrics_port}", flush=True)
    if behaviour == "fails" and settings.worker_id.endswith("-2"):
        raise RuntimeError("worker 2 cannot go on")
    if behaviour == "stops-early" and settings.worker_id.endswith("-1"):
        os.kill(os.getppid(), signal.SIGTERM)  # while the parent may still be forking the next
    print(f"stopped {settings.worker_id} by {signal.sigwait(STOPS)}", flush=True)

def status(error):
    print(f"failed: {error}", flush=True)
    return 3

settings = WorkerSettings(model="unused", worker_id="w", worker_processes=2, metrics_port=9500)
sys.exit(run_worker_processes(settings=settings, serve=serve, exit_status=status))
"""


class StandIns:
    def __init__(self, behaviour: str, log_path: Path) -> None:
        self.log_path = log_path
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", STAND_IN_WORKERS, behaviour], cwd=REPO, env=env, stdout=log, stderr=log
            )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> dict[str, dict[str, str]]:
        return {
            found["id"]: dict(re.findall(r"(\w+)=(\S+)", found["rest"]))
            for found in re.finditer(r"^started (?P<id>\S+) (?P<rest>.*)$", self.text(), re.MULTILINE)
        }

    def wait_started(self, count: int) -> dict[str, dict[str, str]]:
        wait_until(lambda: len(self.started()) >= count, timeout_s=60, message=self.text)
        return self.started()

    def exit_status(self) -> int:
        return self.popen.wait(STOP_S)


@pytest.fixture
def stand_ins(tmp_path: Path) -> Iterator[list[StandIns]]:
    started: list[StandIns] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()
        for child in process.started().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child["pid"]), signal.SIGKILL)


def start(behaviour: str, stand_ins: list[StandIns], tmp_path: Path) -> StandIns:
    process = StandIns(behaviour, tmp_path / f"{behaviour}.log")
    stand_ins.append(process)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_the_parent_reaches_every_worker_and_it_exits_0(
    stand_ins: list[StandIns], tmp_path: Path, signum: signal.Signals
) -> None:
    process = start("waits", stand_ins, tmp_path)
    workers = process.wait_started(2)

    assert set(workers) == {"w-1", "w-2"}
    assert {worker["ppid"] for worker in workers.values()} == {str(process.popen.pid)}
    process.popen.send_signal(signum)

    assert process.exit_status() == 0, process.text()
    assert f"stopped w-1 by {signum.value}" in process.text()
    assert f"stopped w-2 by {signum.value}" in process.text()


def test_a_stop_signal_while_the_workers_start_reaches_every_one_started(
    stand_ins: list[StandIns], tmp_path: Path
) -> None:
    process = start("stops-early", stand_ins, tmp_path)

    assert process.exit_status() == 0, process.text()
    started = process.started()
    assert "w-1" in started
    for worker_id in started:
        assert f"stopped {worker_id} by {signal.SIGTERM.value}" in process.text()


def test_workers_die_with_a_parent_killed_outright(stand_ins: list[StandIns], tmp_path: Path) -> None:
    process = start("waits", stand_ins, tmp_path)
    workers = process.wait_started(2)

    process.popen.kill()
    process.popen.wait()

    pids = [int(worker["pid"]) for worker in workers.values()]
    wait_until(
        lambda: not any(running(pid) for pid in pids),
        timeout_s=30,
        message=lambda: f"workers still running after their parent's SIGKILL: {pids}",
    )


def test_a_failing_worker_stops_the_others_and_its_status_is_the_parents(
    stand_ins: list[StandIns], tmp_path: Path
) -> None:
    process = start("fails", stand_ins, tmp_path)

    assert process.exit_status() == 3, process.text()
    assert "failed: worker 2 cannot go on" in process.text()
    assert f"stopped w-1 by {signal.SIGTERM.value}" in process.text()


def test_a_worker_killed_stops_the_others_and_the_parent_exits_as_a_shell_reports_it(
    stand_ins: list[StandIns], tmp_path: Path
) -> None:
    process = start("waits", stand_ins, tmp_path)
    workers = process.wait_started(2)

    os.kill(int(workers["w-2"]["pid"]), signal.SIGKILL)

    assert process.exit_status() == 128 + signal.SIGKILL, process.text()
    assert f"stopped w-1 by {signal.SIGTERM.value}" in process.text()


def test_each_worker_gets_its_own_id_metrics_port_and_share_of_the_cores() -> None:
    settings = WorkerSettings(model="m", worker_id="host-a", worker_processes=3, metrics_port=9101)

    children = [child_settings(settings, index, cores=8) for index in (1, 2, 3)]

    assert [child.worker_id for child in children] == ["host-a-1", "host-a-2", "host-a-3"]
    assert [child.metrics_port for child in children] == [9101, 9102, 9103]
    assert {child.worker_threads for child in children} == {2}  # 8 cores // 3
    assert {child.worker_processes for child in children} == {1}
    assert len({child.transactional_id for child in children}) == 3


def test_threads_named_and_metrics_off_are_kept() -> None:
    settings = WorkerSettings(model="m", worker_processes=4, worker_threads=3, metrics_port=0)

    child = child_settings(settings, 2, cores=2)

    assert (child.worker_threads, child.metrics_port) == (3, 0)
    assert child_settings(WorkerSettings(model="m", worker_processes=4), 1, cores=2).worker_threads == 1


def test_metrics_ports_that_run_past_65535_are_refused() -> None:
    with pytest.raises(ValidationError, match="no port for each of"):
        WorkerSettings(model="m", worker_processes=2, metrics_port=65535)


@pytest.mark.parametrize(("exitcode", "status"), [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_a_childs_status_reads_as_a_shells(exitcode: int, status: int) -> None:
    assert exit_status_of(exitcode) == status
