"""`make chaos` (`python -m bench.chaos`): the service on a real three-node Kafka cluster, under steady
open-loop load, through one fault after another; every request's outcome is checked.

What it does
    Starts a three-node KRaft cluster (infra/kafka/cluster.sh; state and logs in .local/chaos/<run id>/), two
    API instances (reply partitions 0 and 1) and two workers with the tiny random-weight model, captions
    forced to CHAOS_NEW_TOKENS (100) tokens in batches of up to CHAOS_MAX_BATCH_SIZE (8). A quiet warm-up
    asks both instances the title of each of CHAOS_IMAGES (12) images. Capacity is measured with a short
    closed loop on both instances, then uniform open-loop load runs at CHAOS_CAPACITY_SHARE (0.7) of it,
    at most CHAOS_MAX_RATE (40/s), or at CHAOS_RATE, alternating instances and images, for CHAOS_STEADY_S
    (20 s) of steady state and then through the faults (CHAOS_FAULTS, default all, in this order):
        leader-kill        kill -9 of the node leading the most request partitions, later started again
        reply-leader-kill  kill -9 of the node leading the reply partition API instance 0 reads
        rolling-restart    controlled restart of each node in turn, replicas back in sync in between
        worker-kill        kill -9 of a worker just after a full batch, later replaced by a new worker
        zombie-worker      SIGSTOP of a worker for its session timeout + 4 s, then SIGCONT
        partition          the node leading the most request partitions cut off (iptables on loopback),
                           then healed; skipped, with the reason, where the machine does not allow it
    The workers run with CHAOS_DELIVERY_GUARANTEE (exactly_once); CHAOS_KAFKA_CALLER_SHARE (0.2) of the
    requests are published straight to the request topic, as an outside Kafka caller would, with a reply
    topic of their own (<run id>.kafka-callers.replies).
    Other settings: CHAOS_REQUEST_TIMEOUT_S (20: the API's deadline), CHAOS_SESSION_TIMEOUT_MS (6000: the
    workers'), CHAOS_MAX_RECOVERY_S (60), KAFKA_CLUSTER_BASE_PORT (29092), CHAOS_RUN_DIR, CHAOS_MODEL_DIR.
    Between faults: throughput back for CHAOS_STABLE_S (5 s), every replica in sync, leaders back on their
    preferred nodes, both workers holding partitions. After the last fault the load stops, the workers drain,
    and the worker group's committed offsets are compared with the end of the request and retry topics.

Output (stdout; progress goes to stderr)
    One JSON line for the steady phase, one per fault (its own counts over the requests due from its start to
    the next fault's, `recovery_s` from the fault until answered throughput (200s per second, averaged over
    2 s) was back to 90% of steady and stayed there, `heal_recovery_s` the same for its undoing, null when
    it did not come back within CHAOS_MAX_RECOVERY_S), and last the summary:
    sent, answered_200, errors_503, errors_504, errors_other, lost (no answer within the API's deadline
    + 5 s), wrong_title (a 200 without an id or with another image's title), duplicate_ids, max_recovery_s,
    p99_ms_during_faults, p99_ms_steady, faults (how many ran), faults_skipped, uncommitted_jobs (job
    offsets neither committed by the worker group nor in the dead-letter topic), dead_lettered, rate.
    Each line also has kafka_callers (jobs published straight to Kafka), kafka_callers_answered (a SUCCEEDED
    reply with the right title; lost and wrong_title count the others) and duplicate_replies (jobs, HTTP or
    Kafka, with more than one final reply on the reply topics, read with read_committed after the run).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from bench.chaos.cluster import NODES, ClusterView, KafkaCluster
from bench.chaos.config import ChaosConfig, load_config
from bench.chaos.faults import Chaos, FaultRecord, run_fault
from bench.chaos.kafka_callers import (
    KafkaCallers,
    KafkaJob,
    duplicate_replies,
    final_reply_counts,
    kafka_outcomes,
    read_replies,
)
from bench.chaos.outcomes import Tally, due_between, steady_rate
from bench.chaos.services import RETRY_DELAYS_S, deploy, learn_titles, measure_capacity, service_env
from bench.chaos.traffic import Answer, Traffic, Workload
from bench.images import make_image
from bench.models import ensure_model
from bench.service import run_topics
from bench.stats import percentile
from core.kafka_config import client_config
from core.settings import KafkaSettings, WorkerSettings, load_settings
from schemas import CaptionReply
from tests.support.processes import ChildStarter, exec_child, exit_on_sigterm

_RAMP_S = 3.0  # the first seconds of load, left out of the steady throughput
_IN_FLIGHT_S = 2.0
_DRAIN_TIMEOUT_S = 90.0


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


@dataclass(frozen=True)
class Steady:
    rate: float  # answered 200s per second
    started: float
    ended: float


def run(config: ChaosConfig, *, start: ChildStarter = exec_child) -> dict[str, Any]:
    """start: how the workers and API instances start (fresh interpreters by default, as deployed)."""
    with ExitStack() as stack:
        cluster = KafkaCluster(base_port=config.base_port, state=config.run_dir / "kafka")
        stack.callback(_remove_data, config)
        stack.callback(cluster.stop)
        log(f"starting a three-node cluster (state and logs in {config.run_dir})")
        cluster.start()
        model_dir = config.model_dir or ensure_model("tiny")
        env = service_env(config, bootstrap=cluster.bootstrap, model_dir=model_dir)
        log("starting two workers and two API instances")
        deployment = deploy(stack, env, config.run_dir / "logs", start=start)
        view = ClusterView(cluster.bootstrap)
        workload = _workload(config, deployment.predict_urls)
        client = client_config(load_settings(KafkaSettings), client_id="chaos-kafka-caller") | {
            "bootstrap.servers": cluster.bootstrap
        }
        kafka_callers = KafkaCallers(
            config=client,
            run_id=config.run_id,
            requests_topic=_topic_names(config)[0],
            images=workload.images,
        )
        kafka_callers.start()
        traffic = Traffic(workload, kafka_callers)
        chaos = Chaos(config, cluster, view, deployment, traffic, 0.0, _topic_names(config))
        view.wait_healthy(chaos.topics, timeout_s=120)
        log(f"open-loop load at {workload.rate:.1f} requests/s over both instances")
        traffic.start()
        steady = _steady(chaos)
        chaos.steady_rate = steady.rate
        records = _faults(chaos)
        log("stopping the load; waiting for requests in flight and for the workers to drain")
        traffic.stop()
        kafka_callers.stop()
        accounting = _drain(chaos)
        replies = read_replies(client, [chaos.replies_topic, kafka_callers.reply_topic])
        return _report(chaos, steady, records, accounting, _Replies(kafka_callers.jobs, replies))


def _workload(config: ChaosConfig, urls: Sequence[str]) -> Workload:
    images = [make_image(320, 240, seed=seed).data for seed in range(config.images)]
    titles = learn_titles(urls, images, timeout_s=config.request_timeout_s)
    distinct = [index for index, title in enumerate(titles) if titles.count(title) == 1]
    if len(distinct) < 2:
        raise RuntimeError("fewer than two images with titles of their own: a swapped reply would not show")
    log(f"{len(distinct)} images with distinct titles")
    rate = config.rate
    if rate is None:
        capacity = measure_capacity(urls, images[0], concurrency=2 * config.max_batch_size, seconds=6)
        rate = min(config.max_rate, config.capacity_share * capacity)
        log(f"capacity {capacity:.1f} answers/s")
    return Workload(
        urls=tuple(urls),
        images=tuple(images[index] for index in distinct),
        titles=tuple(titles[index] for index in distinct),
        rate=rate,
        client_timeout_s=config.client_timeout_s,
        kafka_caller_share=config.kafka_caller_share,
    )


def _topic_names(config: ChaosConfig) -> list[str]:
    topics = run_topics(config.run_id, "chaos").model_copy(update={"retry_delays_s": RETRY_DELAYS_S})
    return [topics.requests, topics.replies, *topics.retry_topics, topics.dead_letter, topics.captions]


def _steady(chaos: Chaos) -> Steady:
    started = chaos.traffic.started
    time.sleep(chaos.config.steady_s)
    ended = time.monotonic()
    offered = chaos.traffic.workload.http_rate
    rate = steady_rate(chaos.traffic.snapshot(), started + _RAMP_S, ended, offered_rate=offered)
    log(f"steady: {rate:.1f} answers/s")
    return Steady(rate=rate, started=started, ended=ended)


def _faults(chaos: Chaos) -> list[FaultRecord]:
    records = []
    for name in chaos.config.faults:
        log(f"fault: {name}")
        record = run_fault(chaos, name)
        log(f"fault {name}: {record.skipped or record.info}")
        records.append(record)
    return records


def _drain(chaos: Chaos) -> dict[str, int]:
    """Waits until every job offset is committed by the worker group or its job is in the dead letters."""
    group = chaos.deployment.group
    # the retry tiers' own group
    retry_group = load_settings(WorkerSettings).model_copy(update={"worker_group_id": group}).retry_group_id
    give_up = time.monotonic() + _DRAIN_TIMEOUT_S
    while True:
        unfinished = chaos.view.unfinished_jobs(group, [chaos.topics[0]]) | chaos.view.unfinished_jobs(
            retry_group, chaos.topics[2:-1]
        )
        dead = chaos.view.dead_lettered(chaos.topics[-1])
        left = sum(
            1
            for (topic, partition), offsets in unfinished.items()
            for offset in offsets
            if (topic, partition, offset) not in dead
        )
        if left == 0 or time.monotonic() > give_up:
            return {"uncommitted_jobs": left, "dead_lettered": len(dead)}
        time.sleep(1)


@dataclass(frozen=True)
class _Replies:
    """The Kafka callers' jobs, and every committed reply the reply topics held after the run."""

    jobs: list[KafkaJob]
    replies: list[CaptionReply]

    def counts(
        self, answers: Sequence[Answer], start: float, end: float, titles: Sequence[str]
    ) -> dict[str, int]:
        """The Kafka callers' jobs due in [start, end), and the jobs among those and `answers` (HTTP) that got
        more than one final reply."""
        jobs = [job for job in self.jobs if start <= job.due < end]
        kafka = kafka_outcomes(jobs, self.replies, titles)
        ids = [answer.id for answer in answers] + [job.id for job in jobs]
        return {
            "kafka_callers": kafka.sent,
            "kafka_callers_answered": kafka.answered,
            "kafka_callers_lost": kafka.lost,
            "kafka_callers_wrong_title": kafka.wrong_title,
            "duplicate_replies": duplicate_replies(ids, final_reply_counts(self.replies)),
        }


def _tally(
    answers: Sequence[Answer], replies: _Replies, start: float, end: float, titles: Sequence[str]
) -> dict[str, Any]:
    """HTTP and Kafka callers together: lost and wrong_title count both."""
    line: dict[str, Any] = Tally.of(answers).as_dict()
    counts = replies.counts(answers, start, end, titles)
    line["lost"] += counts["kafka_callers_lost"]
    line["wrong_title"] += counts["kafka_callers_wrong_title"]
    return line | counts


def _report(
    chaos: Chaos, steady: Steady, records: list[FaultRecord], accounting: dict[str, int], replies: _Replies
) -> dict[str, Any]:
    answers = chaos.traffic.snapshot()
    _save_timeline(chaos, answers, records)
    # Requests due in the last seconds before the first fault are still in flight when it strikes.
    steady_answers = due_between(answers, steady.started + _RAMP_S, steady.ended - _IN_FLIGHT_S)
    titles = chaos.traffic.workload.titles
    emit(
        {
            "phase": "steady",
            "rate": round(chaos.traffic.workload.rate, 1),
            "answered_per_s": round(steady.rate, 1),
            **_tally(steady_answers, replies, steady.started + _RAMP_S, steady.ended - _IN_FLIGHT_S, titles),
        }
    )
    during: list[Answer] = []
    for record in records:
        if record.skipped is not None:
            emit({"fault": record.name, "skipped": record.skipped})
            continue
        window = due_between(answers, record.started, record.ended)
        during += window
        emit(
            {
                "fault": record.name,
                **record.info,
                **_tally(window, replies, record.started, record.ended, titles),
                "duration_s": round(record.ended - record.started, 1),
            }
        )
    total = _tally(answers, replies, -math.inf, math.inf, titles)
    recoveries = [r for record in records if record.skipped is None for r in record.recoveries]
    summary = {
        "sent": total["sent"],
        "answered_200": total["answered_200"],
        "errors_503": total["errors_503"],
        "errors_504": total["errors_504"],
        "errors_other": total["errors_other"],
        "lost": total["lost"],
        "wrong_title": total["wrong_title"],
        "duplicate_ids": total["duplicate_ids"],
        **{key: total[key] for key in ("duplicate_replies", "kafka_callers", "kafka_callers_answered")},
        "max_recovery_s": _max_recovery(recoveries),
        "p99_ms_during_faults": round(percentile([a.latency_ms for a in during], 99), 1),
        "p99_ms_steady": round(percentile([a.latency_ms for a in steady_answers], 99), 1),
        "faults": sum(1 for record in records if record.skipped is None),
        "faults_skipped": [record.name for record in records if record.skipped is not None],
        **accounting,
        "rate": round(chaos.traffic.workload.rate, 1),
    }
    emit(summary)
    return summary


def _save_timeline(chaos: Chaos, answers: Sequence[Answer], records: Sequence[FaultRecord]) -> None:
    """Every answer and fault, in seconds from the start of the load, for a closer look at a run."""
    zero = chaos.traffic.started
    path = chaos.config.run_dir / "timeline.jsonl"
    with path.open("w") as out:
        for record in records:
            out.write(
                json.dumps(
                    {
                        "fault": record.name,
                        "at": round(record.started - zero, 3),
                        "until": round(record.ended - zero, 3),
                    }
                )
                + "\n"
            )
        for a in answers:
            out.write(
                json.dumps(
                    {
                        "due": round(a.due - zero, 3),
                        "done": round(a.done - zero, 3),
                        "api": a.api,
                        "status": a.status,
                        "title_ok": a.title_ok,
                    }
                )
                + "\n"
            )


def _max_recovery(recoveries: Sequence[float | None]) -> float | None:
    """None (never recovered) outranks any number."""
    if any(recovery is None for recovery in recoveries):
        return None
    return max((r for r in recoveries if r is not None), default=0.0)


def _remove_data(config: ChaosConfig) -> None:
    """The cluster's logs stay with the run's; its data (topics of this run only) goes."""
    for node in NODES:
        shutil.rmtree(config.run_dir / "kafka" / f"node-{node}" / "data", ignore_errors=True)


def passed(summary: dict[str, Any], *, delivery_guarantee: str) -> bool:
    """Nothing lost or wrong, every job committed; and, exactly once, no job with two final replies (at
    least once allows them: a worker killed between its reply and its commit has the job run again)."""
    duplicates_allowed = delivery_guarantee != "exactly_once"
    return bool(
        summary["lost"] == 0
        and summary["wrong_title"] == 0
        and (duplicates_allowed or summary["duplicate_replies"] == 0)
        and summary["uncommitted_jobs"] == 0
    )


def main() -> int:
    exit_on_sigterm()
    config = load_config()
    summary = run(config)
    return 0 if passed(summary, delivery_guarantee=config.delivery_guarantee) else 1


if __name__ == "__main__":
    sys.exit(main())
