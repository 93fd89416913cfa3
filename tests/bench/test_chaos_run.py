"""The chaos harness, short: a three-node cluster under load loses a leader and a worker, and every caller
still gets its own title or a 503/504 in time, every caller publishing straight to Kafka its own title, and
no job more than one final reply; every job is committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos.__main__ import run
from bench.chaos.config import load_config
from tests.bench.conftest import Environment
from tests.support import preloaded
from tests.support.broker import TEST_BROKER_PORT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUMMARY_KEYS = {
    "sent",
    "answered_200",
    "errors_503",
    "errors_504",
    "lost",
    "wrong_title",
    "max_recovery_s",
    "p99_ms_during_faults",
    "p99_ms_steady",
    "faults",
    "duplicate_replies",
    "kafka_callers",
}


@pytest.mark.timeout(600)
def test_a_leader_and_a_worker_killed_under_load_lose_no_request(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], environment: Environment
) -> None:
    environment(
        CHAOS_FAULTS="leader-kill,worker-kill",
        CHAOS_RATE="15",
        CHAOS_STEADY_S="6",
        CHAOS_IMAGES="4",
        CHAOS_DELIVERY_GUARANTEE="exactly_once",  # a leader kill and a worker kill, duplicate_replies 0
        CHAOS_STABLE_S="3",
        CHAOS_MODEL_DIR=str(tiny_model_dir),
        CHAOS_RUN_DIR=str(tmp_path),
        CHAOS_RUN_ID=f"chaos-test-{tmp_path.name}",
        # Clear of the test broker's own ports (it needs none here: the harness brings its cluster).
        KAFKA_CLUSTER_BASE_PORT=str(TEST_BROKER_PORT + 1000),
    )
    config = load_config()

    summary = run(config, start=preloaded.start)  # forked: the test checks outcomes, not start-up times

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines[-1] == summary
    assert summary.keys() >= SUMMARY_KEYS
    assert [line["fault"] for line in lines if "fault" in line] == ["leader-kill", "worker-kill"]
    assert summary["faults"] == 2
    assert summary["sent"] > 0 and summary["answered_200"] > 0
    assert summary["lost"] == 0, lines
    assert summary["wrong_title"] == 0, lines
    assert summary["duplicate_ids"] == 0, lines
    assert summary["errors_other"] == 0, lines
    assert summary["uncommitted_jobs"] == 0, lines
    assert summary["duplicate_replies"] == 0, lines
    assert summary["kafka_callers"] > 0, lines
    assert summary["kafka_callers_answered"] == summary["kafka_callers"], lines
    assert all("duplicate_replies" in line and "kafka_callers" in line for line in lines), lines
