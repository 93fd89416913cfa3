"""The faults, one at a time: each injects, waits for the service's answered throughput to come back, undoes
itself where that is a step of its own (a node restarted, the network healed, a worker replaced) and waits
again, then for the cluster and the worker group to be whole before the next one."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.cluster import NODES, ClusterView, KafkaCluster
from bench.chaos.config import ChaosConfig
from bench.chaos.outcomes import degraded_s, last_dip_end
from bench.chaos.services import WORKER_COUNT, Deployment, worker_client_id
from bench.chaos.traffic import Traffic
from tests.support.processes import ServiceProcess

_HEAL_TIMEOUT_S = 120.0
_BACKLOG_BATCHES = 3  # jobs to pile up before a worker kill, in full batches
_BATCH_LINE = re.compile(rb"captioned (\d+) jobs")


@dataclass
class FaultRecord:
    name: str
    started: float
    ended: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    marks: dict[str, float] = field(default_factory=dict)  # when each observed step began

    @property
    def recoveries(self) -> list[float | None]:
        """Each observed step's recovery time (None: it did not recover)."""
        return [self.info[step] for step in self.marks]


@dataclass
class Chaos:
    config: ChaosConfig
    cluster: KafkaCluster
    view: ClusterView
    deployment: Deployment
    traffic: Traffic
    steady_rate: float
    topics: list[str]  # every topic of the run: requests, replies, retry tiers, dead letters

    @property
    def requests_topic(self) -> str:
        return self.topics[0]

    @property
    def replies_topic(self) -> str:
        return self.topics[1]

    def observe(self, record: FaultRecord, step: str, action: Callable[[], None]) -> None:
        """Runs action (the fault, or its undoing) and records as `step` the seconds from its start until
        answered throughput was back to 90% of steady and stayed there; None if not within max_recovery_s of
        the action's end."""
        started = time.monotonic()
        record.marks[step] = started
        action()
        action_ended = time.monotonic()
        record.info[step] = None
        while time.monotonic() - action_ended <= self.config.max_recovery_s:
            time.sleep(0.5)
            now = time.monotonic()
            dip_end = last_dip_end(self.traffic.snapshot(), started, now, self.steady_rate)
            if now - max(dip_end, action_ended) >= self.config.stable_s:
                record.info[step] = round(dip_end - started, 1)
                break
        record.info[step.replace("recovery_s", "degraded_s")] = degraded_s(
            self.traffic.snapshot(), started, time.monotonic(), self.steady_rate
        )

    def settle(self) -> None:
        """The next fault starts on a whole cluster (every replica in sync, leaders back where they prefer to
        be) and a whole worker group."""
        self.view.wait_healthy(self.topics, timeout_s=_HEAL_TIMEOUT_S)
        self.view.wait_group(self.deployment.group, members=WORKER_COUNT, timeout_s=_HEAL_TIMEOUT_S)


def leader_kill(chaos: Chaos, record: FaultRecord) -> None:
    """kill -9 of the node leading the most request partitions; later it is started again."""
    node = chaos.view.leader_of_most(chaos.requests_topic)
    record.info["node"] = node
    chaos.observe(record, "recovery_s", lambda: chaos.cluster.kill(node))
    chaos.observe(record, "heal_recovery_s", lambda: chaos.cluster.start(node))


def reply_leader_kill(chaos: Chaos, record: FaultRecord) -> None:
    """kill -9 of the node leading the reply partition API instance 0 reads."""
    node = chaos.view.leader_of(chaos.replies_topic, 0)
    record.info["node"] = node
    chaos.observe(record, "recovery_s", lambda: chaos.cluster.kill(node))
    chaos.observe(record, "heal_recovery_s", lambda: chaos.cluster.start(node))


def rolling_restart(chaos: Chaos, record: FaultRecord) -> None:
    """Each node in turn: controlled shutdown, start, and every replica back in sync before the next."""

    def roll() -> None:
        for node in NODES:
            chaos.cluster.restart(node)
            chaos.view.wait_healthy(chaos.topics, timeout_s=_HEAL_TIMEOUT_S)

    chaos.observe(record, "recovery_s", roll)


def worker_kill(chaos: Chaos, record: FaultRecord) -> None:
    """kill -9 of a worker holding a full batch; a new worker replaces it once the group has recovered
    without it. At a modest rate batches rarely fill, so the worker is first stopped briefly (well inside its
    session timeout) while jobs pile up: it then runs full batches back to back, and is killed the moment it
    finished one, with the next full one already in its hands."""
    victim = _busiest_worker(chaos)
    config = chaos.config
    backlog_s = min(
        _BACKLOG_BATCHES * config.max_batch_size / chaos.traffic.workload.rate,
        config.session_timeout_ms / 2000,
    )
    record.info |= {"worker": victim.name, "backlog_pause_s": round(backlog_s, 1)}

    def strike() -> None:
        _pause(victim, backlog_s)
        record.info.update(_wait_for_full_batch(victim, config.max_batch_size, timeout_s=10))
        _kill(victim)

    chaos.observe(record, "recovery_s", strike)
    chaos.deployment.workers.remove(victim)
    chaos.observe(record, "heal_recovery_s", lambda: _replace_worker(chaos.deployment))


def zombie_worker(chaos: Chaos, record: FaultRecord) -> None:
    """SIGSTOP of a worker for longer than its session timeout, then SIGCONT: the group has moved its
    partitions on, and whatever it still does with its old jobs must not reach a caller twice or wrongly."""
    victim = _busiest_worker(chaos)
    pause_s = chaos.config.zombie_pause_s
    record.info |= {"worker": victim.name, "paused_s": pause_s}

    chaos.observe(record, "recovery_s", lambda: _pause(victim, pause_s))


def network_partition(chaos: Chaos, record: FaultRecord) -> None:
    """The node leading the most request partitions is cut off from everyone (iptables on loopback), then
    healed once the service has recovered without it."""
    node = chaos.view.leader_of_most(chaos.requests_topic)
    record.info["node"] = node
    try:
        chaos.observe(record, "recovery_s", lambda: chaos.cluster.partition(node))
    finally:
        chaos.observe(record, "heal_recovery_s", lambda: chaos.cluster.heal(node))


def partition_unavailable(chaos: Chaos) -> str | None:
    return chaos.cluster.partition_unavailable()


FAULTS: dict[str, Callable[[Chaos, FaultRecord], None]] = {
    "leader-kill": leader_kill,
    "reply-leader-kill": reply_leader_kill,
    "rolling-restart": rolling_restart,
    "worker-kill": worker_kill,
    "zombie-worker": zombie_worker,
    "partition": network_partition,
}
PRECONDITIONS: dict[str, Callable[[Chaos], str | None]] = {"partition": partition_unavailable}


def run_fault(chaos: Chaos, name: str) -> FaultRecord:
    record = FaultRecord(name=name, started=time.monotonic())
    precondition = PRECONDITIONS.get(name)
    record.skipped = precondition(chaos) if precondition else None
    if record.skipped is None:
        FAULTS[name](chaos, record)
        chaos.settle()
    record.ended = time.monotonic()
    return record


def _busiest_worker(chaos: Chaos) -> ServiceProcess:
    """The worker holding the most request partitions: the one whose loss the callers feel."""
    held = chaos.view.request_partitions_by_member(chaos.deployment.group, chaos.requests_topic)
    return max(chaos.deployment.workers, key=lambda worker: held.get(worker_client_id(worker.name), 0))


def _pause(process: ServiceProcess, seconds: float) -> None:
    os.kill(process.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(process.pid, signal.SIGCONT)


def _kill(process: ServiceProcess) -> None:
    process.popen.kill()
    process.popen.wait()


def _replace_worker(deployment: Deployment) -> None:
    deployment.start_worker()


def _wait_for_full_batch(worker: ServiceProcess, size: int, *, timeout_s: float) -> dict[str, Any]:
    """Follows the worker's log (it logs every batch at DEBUG) until a batch of `size` finishes: under this
    load the next full batch is already waiting, so a kill now lands on it."""
    give_up = time.monotonic() + timeout_s
    with worker.log_path.open("rb") as log:
        log.seek(0, os.SEEK_END)
        pending = b""
        while time.monotonic() < give_up:
            pending += log.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                match = _BATCH_LINE.search(line)
                if match and int(match.group(1)) >= size:
                    return {"killed_after_full_batch": True, "batch_size": int(match.group(1))}
            time.sleep(0.005)
    return {"killed_after_full_batch": False}
