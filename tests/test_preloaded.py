"""Services forked from the preloaded forkserver (tests/support/preloaded.py) behave as the exec'd console
script does, and a variable read at import time keeps a command exec'd."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support import preloaded
from tests.support.processes import CAPTIONER, HARNESS_WORKER, ServiceProcess
from tests.support.processes import spawn as spawn_exec

BAD_SETTING = {"CAPTIONER_WORKER_THREADS": "many"}


def forked(args: list[str], env: dict[str, str], log_path: Path) -> ServiceProcess:
    child = preloaded.fork(args, env=env, log_path=log_path)
    return ServiceProcess(name="forked", popen=child, log_path=log_path)


@pytest.mark.parametrize("command", [[CAPTIONER, "worker"], list(HARNESS_WORKER)], ids=["worker", "harness"])
def test_a_forked_worker_exits_with_the_status_and_message_of_the_exec_d_one(
    command: list[str], tmp_path: Path
) -> None:
    env = os.environ | BAD_SETTING
    assert preloaded.forkable(command, env)

    by_exec = spawn_exec("exec", command, env=env, log_path=tmp_path / "exec.log")
    by_fork = forked(command, env, tmp_path / "fork.log")

    status = by_exec.wait_exit(timeout_s=60)
    assert status != 0 and by_fork.wait_exit(timeout_s=60) == status
    message = "CAPTIONER_WORKER_THREADS"
    assert message in by_fork.log() and message in by_exec.log(), by_fork.log()


@pytest.mark.parametrize(
    ("command", "changed", "expected"),
    [
        ([CAPTIONER, "worker"], {"CAPTIONER_WORKER_ID": "w-9", "KAFKA_BOOTSTRAP_SERVERS": "h:1"}, True),
        ([CAPTIONER, "worker"], {"HF_HUB_OFFLINE": "1"}, False),
        ([CAPTIONER, "worker"], {"PYTHONPATH": "/elsewhere"}, False),
        ([CAPTIONER, "api"], {"CAPTIONER_API_PORT": "8001"}, True),
        ([CAPTIONER, "worker"], {"TORCHINDUCTOR_CACHE_DIR": "/tmp/set-by-a-compile"}, True),
        ([CAPTIONER, "topics", "create"], {}, False),
        ([sys.executable, "-m", "tests.support.dying_worker", "worker"], {}, True),
        ([sys.executable, "-m", "pytest"], {}, False),
    ],
)
def test_only_service_commands_whose_changes_are_read_at_run_time_are_forked(
    command: list[str], changed: dict[str, str], expected: bool
) -> None:
    assert preloaded.forkable(command, os.environ | changed) is expected


def test_a_variable_set_by_the_test_that_first_needs_the_forkserver_does_not_stop_later_forks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forkserver starts with the session's environment, before the first test: the chaos test's own
    variables, say, must not make every later service of the session an exec."""
    session = dict(os.environ)
    monkeypatch.setenv("SET_BY_A_TEST", "1")

    assert preloaded.forkable([CAPTIONER, "worker"], session)
    assert not preloaded.forkable([CAPTIONER, "worker"], os.environ)
