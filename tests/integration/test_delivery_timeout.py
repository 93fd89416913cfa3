"""Outcomes the broker does not take, against a real two-broker cluster whose node 2 has stopped: a reply
topic that lives only on node 2 has no leader, so every produce to it fails retriably for as long as the
producer keeps trying.

Such a reply holds its job, and every later job of the same request partition, uncommitted for the
worker's delivery timeout at most: then the job is dead-lettered (reply_undeliverable) and the partition's
committed offset moves past the others' jobs. And a worker with such an outcome pending stops at once when
told to once no broker is left, instead of waiting for outcomes that cannot be written."""

from __future__ import annotations

import json
import signal
import time

import pytest
import requests
from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from core.settings import KafkaSettings, TopicSettings
from core.topics import ensure_topics
from schemas import REPLY_CODEC, REQUEST_CODEC, ReplyStatus
from schemas import headers as record_headers
from tests.conftest import StartWorker
from tests.support.cluster import TwoBrokers
from tests.support.images import make_image_bytes
from tests.support.kafka import caption_request, committed_offsets, publish, publish_request, read_until
from tests.support.services import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELIVERY_TIMEOUT_S = 5
# Well over the delivery timeout on a busy machine, well under librdkafka's default (300 s), which the
# worker used before it had one.
COMMIT_DEADLINE_S = 90
PARTITION = 2
# With nothing to wait for, a stop takes the process's own exit: well under
# CAPTIONER_WORKER_SHUTDOWN_TIMEOUT_S (30 s), which a worker waiting for its pending outcome's revoke would
# spend, and more.
STOP_DEADLINE_S = 15


@pytest.fixture
def cluster_topics(
    cluster: TwoBrokers, topic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> TopicSettings:
    """The service's topics, and the group offsets topic, on node 1 alone: made before node 2 joins."""
    for name, value in topic_env.items():
        monkeypatch.setenv(name, value)
    topics = TopicSettings()
    ensure_topics(KafkaSettings(bootstrap_servers=cluster.bootstrap), topics)
    group = topic_env["CAPTIONER_WORKER_GROUP_ID"]

    def group_coordinator_answers() -> bool:  # the first ask creates the offsets topic
        try:
            committed_offsets(cluster.bootstrap, group, topics.requests, 1)
        except KafkaException:
            return False
        return True

    wait_until(group_coordinator_answers, timeout_s=60, message="the group offsets topic was not created")
    return topics


@pytest.fixture
def leaderless_topic(cluster: TwoBrokers, cluster_topics: TopicSettings) -> str:
    """A reply topic whose only replica is on node 2, which has stopped."""
    cluster.start_second()
    name = f"{cluster_topics.replies}.on-node-2"
    admin = cluster.admin()
    admin.create_topics([NewTopic(name, num_partitions=1, replica_assignment=[[2]])])[name].result(timeout=30)
    wait_until(lambda: cluster.leaders(name) == [2], timeout_s=30, message="node 2 does not lead its topic")
    cluster.second.stop()
    wait_until(
        lambda: cluster.leaders(name) == [-1],
        timeout_s=60,
        message="the topic kept a leader after node 2 stopped",
    )
    return name


def test_a_reply_topic_without_a_leader_holds_other_callers_commits_only_for_the_delivery_timeout(
    start_worker: StartWorker,
    cluster: TwoBrokers,
    cluster_topics: TopicSettings,
    leaderless_topic: str,
    topic_env: dict[str, str],
) -> None:
    topics, group = cluster_topics, topic_env["CAPTIONER_WORKER_GROUP_ID"]
    worker = start_worker(
        KAFKA_BOOTSTRAP_SERVERS=cluster.bootstrap, CAPTIONER_DELIVERY_TIMEOUT_S=str(DELIVERY_TIMEOUT_S)
    )
    stuck = caption_request(make_image_bytes("PNG", seed=1), reply_topic=leaderless_topic)
    others = [
        caption_request(make_image_bytes("PNG", seed=seed), reply_topic=topics.replies) for seed in (2, 3)
    ]
    stuck_bytes = REQUEST_CODEC.encode(stuck)
    publish(
        cluster.bootstrap,
        topics.requests,
        stuck_bytes,
        key=stuck.correlation_id.encode(),
        partition=PARTITION,
    )
    for request in others:
        publish_request(cluster.bootstrap, topics.requests, request, partition=PARTITION)

    wait_until(
        lambda: (
            committed_offsets(cluster.bootstrap, group, topics.requests, topics.request_partitions)[PARTITION]
            == 3
        ),
        timeout_s=COMMIT_DEADLINE_S,
        interval_s=0.5,
        message="the partition's committed offset did not pass the stuck job and the two behind it",
    )
    [dead] = read_until(cluster.bootstrap, topics.dead_letter, lambda records: len(records) >= 1)
    assert dead.value == stuck_bytes
    assert dead.headers[record_headers.DLQ_ERROR_CODE] == b"reply_undeliverable"
    assert (
        b"did not take the reply within the delivery timeout"
        in dead.headers[record_headers.DLQ_ERROR_MESSAGE]
    )
    wanted = {request.correlation_id.encode() for request in others}
    replies = read_until(
        cluster.bootstrap,
        topics.replies,
        lambda seen: wanted <= {record.key for record in seen},
    )
    statuses = {REPLY_CODEC.decode(r.value).status for r in replies if r.key in wanted}
    assert statuses == {ReplyStatus.SUCCEEDED}

    # A record timed out makes the idempotent producer drain and bump its epoch, never a fatal error:
    # the worker goes on producing.
    later = caption_request(make_image_bytes("PNG", seed=4), reply_topic=topics.replies)
    publish_request(cluster.bootstrap, topics.requests, later, partition=PARTITION)
    read_until(
        cluster.bootstrap, topics.replies, lambda seen: later.correlation_id.encode() in {r.key for r in seen}
    )
    assert worker.alive()


def test_a_worker_with_an_outcome_pending_and_no_broker_left_stops_at_once(
    start_worker: StartWorker, cluster: TwoBrokers, cluster_topics: TopicSettings, leaderless_topic: str
) -> None:
    metrics_port = free_port()
    worker = start_worker(
        KAFKA_BOOTSTRAP_SERVERS=cluster.bootstrap,
        CAPTIONER_DELIVERY_TIMEOUT_S="600",  # the reply stays pending for the whole test
        CAPTIONER_WORKER_METRICS_PORT=str(metrics_port),
    )
    stuck = caption_request(make_image_bytes("PNG", seed=1), reply_topic=leaderless_topic)
    publish_request(cluster.bootstrap, cluster_topics.requests, stuck, partition=PARTITION)
    wait_until(
        lambda: succeeded(metrics_port) >= 1,
        timeout_s=60,
        message="the job was not captioned",
    )  # its reply is produced, and waits for a leader

    cluster.stop_first()
    worker.wait_for_log("no Kafka broker reachable (", timeout_s=30)
    signalled = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)

    assert worker.wait_exit(timeout_s=STOP_DEADLINE_S) == 0, worker.log()[-3000:]
    # For the figures in docs/security.md (pytest -s shows it).
    print(json.dumps({"worker_stopped_s": round(time.monotonic() - signalled, 2)}))


def succeeded(metrics_port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    counted = 'captioner_worker_jobs_total{outcome="succeeded"}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(counted))
