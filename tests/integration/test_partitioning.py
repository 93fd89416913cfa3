"""Keyed records land in the partition Kafka's Java clients (and Kafka Streams) would choose, so a reply
keyed by correlation id meets consumers that partition by the same rule."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message, Producer

from core.kafka_config import producer_config
from core.settings import KafkaSettings, TopicSettings
from tests.support.murmur2 import java_partition, murmur2

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize(
    ("key", "java_hash"),
    # Utils.murmur2 values from Kafka's Java client, as other ports test against them.
    [
        ("1", -1993445489),
        ("12", 126087238),
        ("123", -267702483),
        ("1234", -1614185708),
        ("kafka", -798503068),
    ],
)
def test_the_helper_hashes_like_kafkas_java_client(key: str, java_hash: int) -> None:
    assert murmur2(key.encode()) == java_hash


def test_keyed_records_land_where_java_clients_put_them(topics: TopicSettings) -> None:
    producer = Producer(producer_config(KafkaSettings(), topics, client_id="partitioning-test"))
    keys = [f"job-{index:02d}-{index * 7919}".encode() for index in range(30)]
    landed: dict[bytes, int] = {}

    def delivered(error: KafkaError | None, message: Message) -> None:
        assert error is None, error
        key, partition = message.key(), message.partition()
        assert key is not None and partition is not None
        landed[key] = partition

    for key in keys:
        producer.produce(topics.requests, key=key, value=b"x", on_delivery=delivered)
    assert producer.flush(30) == 0, "records were not delivered"

    expected = {key: java_partition(key, topics.request_partitions) for key in keys}
    assert landed == expected
