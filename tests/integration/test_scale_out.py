"""Workers share the request topic: every worker holds its fair share of request partitions, and of
each retry tier, after every join, leave and crash. Against a real broker."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from core.settings import ImageSettings, KafkaSettings, TopicSettings, WorkerSettings
from inference_consumer.worker import InferenceWorker
from tests.conftest import StartWorker
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class WorkerConsumers:
    """A worker's two group consumers, built from the worker's own configuration, polled on a thread:
    what a worker does for the group protocol, without a model."""

    def __init__(self, worker_id: str) -> None:
        settings = WorkerSettings(worker_id=worker_id, session_timeout_ms=6000)
        worker = InferenceWorker(
            settings=settings, kafka=KafkaSettings(), topics=TopicSettings(), images=ImageSettings()
        )
        self.consumers = []
        for subscription in worker.subscriptions():
            consumer = Consumer(subscription.config)
            consumer.subscribe(subscription.topics)
            self.consumers.append(consumer)
        self.polling = threading.Event()
        self.polling.set()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while self.polling.is_set():
            for consumer in self.consumers:
                consumer.poll(0.05)

    def held(self) -> Counter[str]:
        return Counter(tp.topic for consumer in self.consumers for tp in consumer.assignment())

    def leave(self) -> None:
        self.polling.clear()
        self._thread.join()
        for consumer in self.consumers:
            consumer.close()


def fair(members: list[WorkerConsumers], topics: TopicSettings) -> bool:
    count, partitions = len(members), topics.request_partitions
    shares = {partitions // count, -(-partitions // count)}
    holdings = [member.held() for member in members]
    return all(
        sum(held[topic] for held in holdings) == partitions
        and all(held[topic] in shares for held in holdings)
        for topic in [topics.requests, *topics.retry_topics]
    )


def wait_fair(members: list[WorkerConsumers], topics: TopicSettings, *, timeout_s: float = 60) -> None:
    wait_until(
        lambda: fair(members, topics),
        timeout_s=timeout_s,
        interval_s=0.2,
        message=lambda: [
            [member.held()[topic] for topic in [topics.requests, *topics.retry_topics]] for member in members
        ],
    )


@pytest.fixture
def members(topics: TopicSettings) -> Iterator[list[WorkerConsumers]]:
    started: list[WorkerConsumers] = []
    yield started
    for member in started:
        if member.polling.is_set():
            member.leave()


def test_every_worker_holds_its_share_of_each_topic_as_workers_join_and_leave(
    topics: TopicSettings, members: list[WorkerConsumers]
) -> None:
    active: list[WorkerConsumers] = []
    for index in range(6):
        member = WorkerConsumers(f"w{index}")
        members.append(member)
        active.append(member)
        wait_fair(active, topics)
    for leaving in (active[0], active[3]):
        leaving.leave()
        active.remove(leaving)
        wait_fair(active, topics)
    assert (
        len(active) == 4
    )  # a crash (kill -9) is the process test's: librdkafka heartbeats on its own thread


def request_partitions_by_member(bootstrap: str, group: str, topic: str) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [described] = admin.describe_consumer_groups([group]).values()
    members = described.result(timeout=10).members
    return sorted(sum(tp.topic == topic for tp in member.assignment.topic_partitions) for member in members)


def test_three_worker_processes_share_the_request_topic_and_the_survivors_take_over(
    start_worker: StartWorker, topics: TopicSettings, env: dict[str, str], kafka_bootstrap: str
) -> None:
    group = env["CAPTIONER_WORKER_GROUP_ID"]
    workers = [start_worker(CAPTIONER_SESSION_TIMEOUT_MS="6000") for _ in range(3)]

    def shares() -> list[int]:
        return request_partitions_by_member(kafka_bootstrap, group, topics.requests)

    wait_until(lambda: shares() == [2, 2, 2], timeout_s=60, interval_s=0.5, message=shares)

    workers[0].kill()
    wait_until(lambda: shares() == [3, 3], timeout_s=60, interval_s=0.5, message=shares)
