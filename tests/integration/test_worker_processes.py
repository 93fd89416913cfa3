"""CAPTIONER_WORKER_PROCESSES: `captioner worker` forks that many workers after its imports. Against a
real broker: each is a member of the group with request partitions of its own and answers requests under
its own id; a SIGTERM to the parent stops them all gracefully."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from bench.breakdown import request_partitions_held
from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes
from tests.support.processes import free_ports
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = 2
REQUESTS = 24


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def post(url: str, seed: int) -> requests.Response:
    image = base64.b64encode(make_image_bytes("PNG", seed=seed)).decode()
    return requests.post(f"{url}/api/v1/predictions", json={"image": image}, timeout=90)


def test_forked_workers_each_hold_partitions_answer_and_stop_with_the_parent(
    start_worker: StartWorker, start_api: StartApi, env: dict[str, str]
) -> None:
    first_port = free_ports(WORKERS)
    parent = start_worker(
        CAPTIONER_WORKER_PROCESSES=str(WORKERS), CAPTIONER_WORKER_METRICS_PORT=str(first_port)
    )
    ports = range(first_port, first_port + WORKERS)
    topic = env["CAPTIONER_TOPIC_REQUESTS"]
    wait_until(
        lambda: all(request_partitions_held(f"http://127.0.0.1:{port}/metrics", topic) for port in ports),
        timeout_s=90,
        message=lambda: parent.log_tail(),
    )
    children = [
        int(pid) for pid in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
    ]
    assert len(children) == WORKERS and {parent_of(child) for child in children} == {parent.pid}

    api = start_api()
    with ThreadPoolExecutor(REQUESTS) as callers:
        answers = list(callers.map(lambda seed: post(api.url, seed), range(REQUESTS)))

    assert [answer.status_code for answer in answers] == [200] * REQUESTS, [a.text for a in answers]
    # start_worker names the parent worker-1; request keys spread the jobs over every partition
    assert {answer.json()["worker_id"] for answer in answers} == {"worker-1-1", "worker-1-2"}

    assert parent.stop(timeout_s=60) == 0, parent.log_tail()
    log = parent.log()
    assert log.count("worker worker-1-1 stopped") == 1 and log.count("worker worker-1-2 stopped") == 1
    # each fork's main thread is named after it, so its lines say whose they are
    assert '"threadName": "worker-1-1"' in log and '"threadName": "worker-1-2"' in log
