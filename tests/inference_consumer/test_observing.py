"""What the worker measures from outside data: queue time from a hostile created_at, consumer lag from
librdkafka's statistics, the partitions held."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from confluent_kafka import TopicPartition
from prometheus_client import REGISTRY

from inference_consumer.observing import (
    AssignedPartitions,
    ConsumerLag,
    observe_queue_time,
    partition_lags,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_plausible_created_at_is_observed() -> None:
    count, total = (
        sample("captioner_worker_queue_seconds_count"),
        sample("captioner_worker_queue_seconds_sum"),
    )

    observe_queue_time(NOW - timedelta(seconds=1.5), NOW)

    assert sample("captioner_worker_queue_seconds_count") == count + 1
    assert sample("captioner_worker_queue_seconds_sum") - total == 1.5


def test_a_created_at_in_the_future_or_long_ago_is_counted_not_observed() -> None:
    count, total = (
        sample("captioner_worker_queue_seconds_count"),
        sample("captioner_worker_queue_seconds_sum"),
    )
    future = sample("captioner_worker_queue_time_unusable_total", reason="future")
    too_old = sample("captioner_worker_queue_time_unusable_total", reason="too_old")

    observe_queue_time(NOW + timedelta(days=3650), NOW)
    observe_queue_time(datetime(1970, 1, 1, tzinfo=UTC), NOW)
    observe_queue_time(NOW + timedelta(milliseconds=1), NOW)

    assert sample("captioner_worker_queue_seconds_count") == count
    assert sample("captioner_worker_queue_seconds_sum") == total
    assert sample("captioner_worker_queue_time_unusable_total", reason="future") == future + 2
    assert sample("captioner_worker_queue_time_unusable_total", reason="too_old") == too_old + 1


def stats(partitions: dict[str, dict[str, object]], topic: str = "t.requests") -> str:
    """The part of librdkafka's statistics JSON that the lag comes from."""
    return json.dumps({"name": "c", "type": "consumer", "topics": {topic: {"partitions": partitions}}})


def test_lag_is_taken_from_assigned_partitions_with_a_known_lag() -> None:
    found = dict(
        partition_lags(
            json.loads(
                stats(
                    {
                        "0": {"desired": True, "consumer_lag": 7},
                        "1": {"desired": False, "consumer_lag": 3},  # not ours
                        "2": {"desired": True, "consumer_lag": -1},  # not known yet
                        "-1": {"desired": False, "consumer_lag": -1},  # librdkafka's "unassigned" queue
                    }
                )
            )
        )
    )

    assert found == {("t.requests", "0"): 7}


def test_a_partition_no_longer_held_loses_its_lag_series() -> None:
    lag = ConsumerLag(interval_s=0)
    lag.on_stats(
        stats({"4": {"desired": True, "consumer_lag": 12}, "5": {"desired": True, "consumer_lag": 0}})
    )
    assert sample("captioner_worker_consumer_lag", topic="t.requests", partition="4") == 12

    lag.on_stats(stats({"5": {"desired": True, "consumer_lag": 2}}))

    assert (
        REGISTRY.get_sample_value("captioner_worker_consumer_lag", {"topic": "t.requests", "partition": "4"})
        is None
    )
    assert sample("captioner_worker_consumer_lag", topic="t.requests", partition="5") == 2
    lag.on_stats("not json")  # ignored


def test_assigned_partitions_follow_incremental_rebalances() -> None:
    held = AssignedPartitions(["a.requests"])
    assert sample("captioner_worker_assigned_partitions", topic="a.requests") == 0

    held.assigned([TopicPartition("a.requests", 0), TopicPartition("a.requests", 1)])
    held.assigned([TopicPartition("a.requests", 2)])
    held.revoked([TopicPartition("a.requests", 0)])

    assert sample("captioner_worker_assigned_partitions", topic="a.requests") == 2
