"""Exactly once while the worker group's coordinator goes away and comes back, against a real two-broker
cluster: the group's offsets live on node 2 alone, everything else (topics, transaction coordinators) on
node 1. A transaction that sends its offsets once node 2 has left the cluster waits in librdkafka's
send_offsets_to_transaction past the call's own timeout, and keeps waiting after node 2 is back: a request
for a group coordinator whose broker was dropped from the cluster's metadata is taken up again only when
another of the producer's connections goes up or down (confluentinc/librdkafka#5456, #5511). The worker
must still commit every job once node 2 is back, and a read_committed reader see each job's reply once."""

from __future__ import annotations

import re
import uuid

import pytest
from confluent_kafka import KafkaException, Producer

from core.kafka_config import producer_config, transactional
from core.settings import KafkaSettings, TopicSettings
from core.topics import ensure_topics
from schemas import REPLY_CODEC, ReplyStatus
from tests.conftest import StartWorker
from tests.support.cluster import TwoBrokers
from tests.support.images import make_image_bytes
from tests.support.kafka import caption_request, committed_offsets, publish_request, read_all
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITION = 0
DELIVERY_TIMEOUT_S = 5  # the transaction timeout is 10 s more
DONE_S = 120
CAPTIONED = re.compile(r"captioned \d+ jobs")


@pytest.fixture
def cluster_topics(
    cluster: TwoBrokers, topic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[TopicSettings, str]:
    """The service's topics and the transaction coordinators on node 1 alone (made before node 2 joins);
    then node 2, and the group offsets topic across both nodes; the worker group's coordinator on node 2."""
    for name, value in topic_env.items():
        monkeypatch.setenv(name, value)
    kafka = KafkaSettings(bootstrap_servers=cluster.bootstrap)
    topics = TopicSettings()
    ensure_topics(kafka, topics)
    Producer(
        producer_config(kafka, topics, client_id="test-txn-state")
        | transactional(f"test-{uuid.uuid4().hex}", delivery_timeout_s=DELIVERY_TIMEOUT_S)
    ).init_transactions(60)  # the first one creates the transaction state topic
    cluster.start_second()
    group = wait_until(
        lambda: group_coordinated_by(cluster, 2, prefix=topic_env["CAPTIONER_WORKER_GROUP_ID"]),
        timeout_s=60,
        message="no group coordinated by node 2",
    )
    return topics, group


def group_coordinated_by(cluster: TwoBrokers, node: int, *, prefix: str) -> str | None:
    """A fresh group id whose coordinator is node (the first ask creates the group offsets topic)."""
    admin = cluster.admin()
    for _ in range(20):
        group = f"{prefix}-{uuid.uuid4().hex[:6]}"
        try:
            description = admin.describe_consumer_groups([group])[group].result(10)
        except KafkaException:  # the offsets topic is being created
            return None
        if description.coordinator is not None and description.coordinator.id == node:
            return group
    return None


def test_a_worker_commits_again_once_its_group_coordinator_is_back(
    start_worker: StartWorker, cluster: TwoBrokers, cluster_topics: tuple[TopicSettings, str]
) -> None:
    topics, group = cluster_topics
    worker = start_worker(
        KAFKA_BOOTSTRAP_SERVERS=cluster.bootstrap,
        CAPTIONER_WORKER_GROUP_ID=group,
        CAPTIONER_DELIVERY_GUARANTEE="exactly_once",
        CAPTIONER_DELIVERY_TIMEOUT_S=str(DELIVERY_TIMEOUT_S),
        CAPTIONER_LOG_LEVEL="DEBUG",  # each batch's "captioned N jobs" line
    )
    requests = [
        caption_request(make_image_bytes("PNG", seed=seed), reply_topic=topics.replies) for seed in range(3)
    ]

    def committed() -> int:
        try:
            offsets = committed_offsets(cluster.bootstrap, group, topics.requests, topics.request_partitions)
        except KafkaException:  # no coordinator, or the group's offsets in an open transaction
            return -1
        return offsets[PARTITION]

    publish_request(cluster.bootstrap, topics.requests, requests[0], partition=PARTITION)
    # Read committed: its transaction's markers are written, node 2's included.
    wait_until(lambda: committed() == 1, timeout_s=DONE_S, message="the first job was not committed")

    cluster.second.stop()
    wait_until(lambda: cluster.brokers() == {1}, timeout_s=60, message="node 2 did not leave the cluster")
    publish_request(cluster.bootstrap, topics.requests, requests[1], partition=PARTITION)
    wait_until(  # its transaction now sends its offsets to a coordinator that is not there
        lambda: len(CAPTIONED.findall(worker.log())) >= 2,
        timeout_s=60,
        message="the second job was not captioned",
    )
    cluster.start_second()
    publish_request(cluster.bootstrap, topics.requests, requests[2], partition=PARTITION)

    wait_until(
        lambda: committed() == len(requests),
        timeout_s=DONE_S,
        interval_s=0.5,
        message=lambda: f"committed {committed()}; worker log:\n{worker.log_tail()}",
    )
    replies = [
        REPLY_CODEC.decode(record.value)
        for record in read_all(cluster.bootstrap, topics.replies, topics.reply_partitions)
    ]
    for request in requests:
        [reply] = [r for r in replies if r.correlation_id == request.correlation_id]
        assert reply.status is ReplyStatus.SUCCEEDED
    assert worker.alive()
