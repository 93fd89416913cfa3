"""Broker warm-up before any measurement.

A broker's JVM runs its produce and fetch paths interpreted until the JIT has compiled them, which takes
a few thousand requests. A deployed broker is long past that, but this benchmark often starts its own
broker seconds before measuring, and an idle request then spends measurably longer in its two Kafka hops
than on the same broker warm (docs/performance.md). So the run first drives round trips
(produce with the service's producer settings, then fetch it back) through a scratch topic of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.stats import median
from core.kafka_config import client_config, consumer_config, producer_config
from core.settings import KafkaSettings, TopicSettings

_TIMEOUT_S = 30.0
ROUND_TRIPS = 4000  # past where the median round trip stops falling on a fresh broker (docs/performance.md)


@dataclass(frozen=True)
class WarmupResult:
    round_trips: int
    seconds: float
    first_ms: float  # median round trip over the first tenth
    last_ms: float  # ... and over the last tenth

    def describe(self) -> str:
        return (
            f"broker warm-up: {self.round_trips} produce+fetch round trips in {self.seconds:.1f} s, "
            f"median {self.first_ms:.2f} ms at first, {self.last_ms:.2f} ms at the end"
        )


def warm_up_broker(
    bootstrap: str, *, topic: str, payload_bytes: int, round_trips: int = ROUND_TRIPS
) -> WarmupResult:
    kafka, at = KafkaSettings(), {"bootstrap.servers": bootstrap}
    admin = AdminClient(client_config(kafka, client_id=f"{topic}-admin") | at)
    _wait(admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]))
    try:
        return _round_trips(kafka, at, topic, round_trips=round_trips, payload=b"\x5a" * payload_bytes)
    finally:
        _wait(admin.delete_topics([topic], operation_timeout=_TIMEOUT_S))


def _round_trips(
    kafka: KafkaSettings, at: dict[str, str], topic: str, *, round_trips: int, payload: bytes
) -> WarmupResult:
    topics = TopicSettings()
    producer = Producer(producer_config(kafka, topics, client_id=f"{topic}-producer") | at)
    consumer = Consumer(
        consumer_config(kafka, topics, client_id=f"{topic}-consumer", group_id=f"{topic}-group") | at
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    durations_ms: list[float] = []
    started = time.perf_counter()
    try:
        for _ in range(round_trips):
            sent = time.perf_counter()
            producer.produce(topic, value=payload)
            producer.poll(0)
            if consumer.poll(_TIMEOUT_S) is None:
                raise TimeoutError(f"broker warm-up: no record back from {topic} in {_TIMEOUT_S:g} s")
            durations_ms.append((time.perf_counter() - sent) * 1000)
        producer.flush(_TIMEOUT_S)
    finally:
        consumer.close()
    tenth = max(1, round_trips // 10)
    return WarmupResult(
        round_trips=round_trips,
        seconds=time.perf_counter() - started,
        first_ms=median(durations_ms[:tenth]),
        last_ms=median(durations_ms[-tenth:]),
    )


def _wait(futures: Mapping[str, Future[Any]]) -> None:
    for future in futures.values():
        future.result(timeout=_TIMEOUT_S)
