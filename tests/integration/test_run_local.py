"""`make run` (infra/run-local.sh) stops cleanly however it is told to: a supervisor's SIGTERM to its whole
process group, or Ctrl-C (SIGINT to the group), with a caption request's job running. The broker must not
go first, every process (make, script, API, worker, broker) must be gone within 15 s, the job is answered,
and the last line says it stopped. The script exits 0; make, which passes a SIGTERM on to the script once
more, ends by the signal it got, as make does, without an error line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.integration.test_pipeline import PREDICT
from tests.support.broker import BROKER_SCRIPT, REPO
from tests.support.images import make_image_bytes
from tests.support.processes import free_ports, running, session_members
from tests.support.services import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_LOCAL = [str(REPO / "infra" / "run-local.sh")]
# What `make run` runs, the install it depends on taken as done: a test installs nothing.
MAKE_RUN = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed", "run"]
STOP_DEADLINE_S = 15


@dataclass
class LocalRun:
    popen: subprocess.Popen[bytes]
    output: Path
    api_url: str
    worker_metrics_urls: list[str]
    broker_env: dict[str, str]
    answers: list[int] = field(default_factory=list)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def processes(self) -> set[int]:
        """The script's session (itself, the API, the workers) and the broker, which has a session of its
        own."""
        session = session_members(self.popen.pid)
        broker_pid = Path(self.broker_env["KAFKA_LOCAL_STATE"], "broker.pid")
        return session | ({int(broker_pid.read_text())} if broker_pid.exists() else set())

    def jobs_started(self) -> float:
        """Jobs whose batch has started, on any worker (each observes a job's queue time then)."""
        return sum(self._jobs_started(url) for url in self.worker_metrics_urls)

    @staticmethod
    def _jobs_started(url: str) -> float:
        metrics = requests.get(url, timeout=5).text
        [line] = [
            line for line in metrics.splitlines() if line.startswith("captioner_worker_queue_seconds_count")
        ]
        return float(line.split()[1])


@pytest.fixture(
    params=[(RUN_LOCAL, 1), (MAKE_RUN, 1), (RUN_LOCAL, 2)], ids=["run-local.sh", "make-run", "WORKERS=2"]
)
def local_run(request: pytest.FixtureRequest, tmp_path: Path, endless_model_dir: Path) -> Iterator[LocalRun]:
    command, workers = request.param
    broker_env = {
        "KAFKA_LOCAL_PORT": str(free_port()),
        "KAFKA_LOCAL_CONTROLLER_PORT": str(free_port()),
        "KAFKA_LOCAL_STATE": str(tmp_path / "broker"),
    }
    api_port, worker_metrics_port = free_port(), free_ports(workers)
    env = {name: value for name, value in os.environ.items() if name != "KAFKA_BOOTSTRAP_SERVERS"} | {
        **broker_env,
        "CAPTIONER_API_PORT": str(api_port),
        "METRICS_PORT_BASE": str(worker_metrics_port - 1),  # worker N serves on base + N
        # Every caption 100 tokens long: long enough a job that the signal finds it running.
        "CAPTIONER_MODEL": str(endless_model_dir),
        "CAPTIONER_WORKER_THREADS": "1",
        "CAPTIONER_CACHE_ENABLED": "false",
        "CAPTIONER_LOG_FORMAT": "text",
        "CAPTIONER_MAX_NEW_TOKENS": "100",
        "WORKERS": str(workers),
    }
    output = tmp_path / "run-local.out"
    with output.open("wb") as out:
        popen = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    run = LocalRun(
        popen,
        output,
        api_url=f"http://127.0.0.1:{api_port}",
        worker_metrics_urls=[f"http://127.0.0.1:{worker_metrics_port + n}/metrics" for n in range(workers)],
        broker_env=broker_env,
    )
    started: set[int] = set()
    try:
        wait_until(
            lambda: "ready:" in run.text() or popen.poll() is not None,
            timeout_s=240,
            message=lambda: run.text()[-3000:],
        )
        assert popen.poll() is None, run.text()[-3000:]
        started = run.processes()
        yield run
    finally:
        for pid in started | run.processes():
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        popen.wait()
        subprocess.run([str(BROKER_SCRIPT), "stop"], env=os.environ | broker_env, check=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_make_run_stops_within_15_s_when_its_process_group_is_signalled(
    local_run: LocalRun, signum: signal.Signals
) -> None:
    processes = local_run.processes()
    assert len(processes) >= 4, processes  # the script, the API, a worker, the broker

    def post() -> None:
        response = requests.post(
            local_run.api_url + PREDICT,
            data=make_image_bytes("PNG", seed=3),
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        local_run.answers.append(response.status_code)

    caller = threading.Thread(target=post)
    caller.start()
    wait_until(lambda: local_run.jobs_started() >= 1, timeout_s=30, message="the job never started")
    signalled = time.monotonic()
    os.killpg(local_run.popen.pid, signum)

    wait_until(
        lambda: not any(running(pid) for pid in processes),
        timeout_s=STOP_DEADLINE_S,
        message=lambda: (
            f"still running: {[pid for pid in processes if running(pid)]}\n" + local_run.text()[-3000:]
        ),
    )
    # For the figures in docs/quickstart.md (pytest -s shows it).
    print(json.dumps({"signal": signum.name, "stopped_s": round(time.monotonic() - signalled, 2)}))
    caller.join(timeout=60)
    by_make = local_run.popen.args == MAKE_RUN
    assert local_run.popen.wait(timeout=5) == (-signum if by_make else 0), local_run.text()[-3000:]
    assert local_run.text().rstrip().splitlines()[-1] == f"stopped ({signum.name})"
    assert "make: ***" not in local_run.text()
    assert local_run.answers == [200], local_run.text()[-4000:]  # the job running was finished and answered
