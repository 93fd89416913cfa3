"""What the worker measures beyond its own timings: queue time from a request's (hostile) created_at, consumer
lag from librdkafka's statistics, the partitions each consumer holds, and the dead-letter topic's depth."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime

from confluent_kafka import Consumer, TopicPartition

from inference_consumer import metrics

log = logging.getLogger(__name__)

# A created_at more than this far back is a replayed dead letter or a wrong clock, not time spent queued.
MAX_QUEUE_S = 86_400.0
# Lag a few seconds old is fresh enough for a dashboard and an alert; librdkafka's statistics come more
# often (core.broker_watch reads broker states from them), and only one report in this long is read.
LAG_INTERVAL_S = 5.0
DLQ_REFRESH_S = 30.0
_WATERMARK_TIMEOUT_S = 1.0


def observe_queue_time(created_at: datetime, batch_start: datetime) -> None:
    """The request's created_at comes from whoever published it: a time in the future or absurdly far back is
    counted, never observed, so it cannot push a histogram's sum negative or off the scale."""
    waited_s = (batch_start - created_at).total_seconds()
    if waited_s < 0:
        metrics.QUEUE_TIME_UNUSABLE.labels(reason="future").inc()
    elif waited_s > MAX_QUEUE_S:
        metrics.QUEUE_TIME_UNUSABLE.labels(reason="too_old").inc()
    else:
        metrics.QUEUE_SECONDS.observe(waited_s)


class ConsumerLag:
    """librdkafka's `stats_cb`: sets the lag gauge of each partition the consumer holds, and drops the series
    of partitions it no longer holds. Called on the consumer's polling thread."""

    def __init__(self, *, interval_s: float = LAG_INTERVAL_S) -> None:
        self._series: set[tuple[str, str]] = set()
        self._interval_s = interval_s
        self._next = 0.0

    def on_stats(self, stats_json: str) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval_s
        try:
            lags = dict(partition_lags(json.loads(stats_json)))
        except (ValueError, TypeError, AttributeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)
            return
        for topic, partition in self._series - lags.keys():
            metrics.CONSUMER_LAG.remove(topic, partition)
        for (topic, partition), lag in lags.items():
            metrics.CONSUMER_LAG.labels(topic=topic, partition=partition).set(lag)
        self._series = set(lags)


def partition_lags(stats: dict[str, object]) -> Iterable[tuple[tuple[str, str], int]]:
    """(topic, partition) -> consumer_lag for the partitions this consumer is assigned and knows a lag of
    (librdkafka reports -1 until it has both a committed offset and a high watermark)."""
    topics = stats.get("topics") or {}
    if not isinstance(topics, dict):
        return
    for topic, topic_stats in topics.items():
        for partition, partition_stats in (topic_stats.get("partitions") or {}).items():
            lag = partition_stats.get("consumer_lag", -1)
            if int(partition) >= 0 and partition_stats.get("desired") and isinstance(lag, int) and lag >= 0:
                yield (topic, partition), lag


class AssignedPartitions:
    """The partitions one consumer holds, kept from its (incremental, under cooperative-sticky) rebalance
    callbacks, exported per topic."""

    def __init__(self, topics: Iterable[str]) -> None:
        self._held: set[tuple[str, int]] = set()
        self._topics = list(topics)
        self._export()

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self._held |= {(p.topic, p.partition) for p in partitions}
        self._export()

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self._held -= {(p.topic, p.partition) for p in partitions}
        self._export()

    def _export(self) -> None:
        for topic in self._topics:
            metrics.ASSIGNED_PARTITIONS.labels(topic=topic).set(sum(1 for t, _ in self._held if t == topic))


class DeadLetterDepth:
    """Every DLQ_REFRESH_S, the dead-letter topic's records (high minus low watermark over its partitions),
    asked with a consumer the worker already has. Nobody consumes the DLQ, so this is its backlog; every
    worker exports the same figure (dashboards take the max)."""

    def __init__(self, topic: str, *, interval_s: float = DLQ_REFRESH_S) -> None:
        self._topic = topic
        self._interval_s = interval_s
        self._next = 0.0
        self._lock = threading.Lock()

    def maybe_refresh(self, consumer: Consumer) -> None:
        """Cheap when not due; when due, a metadata request and one watermark query per partition, each
        bounded by a short timeout (a broker outage leaves the last figure in place)."""
        now = time.monotonic()
        if now < self._next or not self._lock.acquire(blocking=False):
            return
        try:
            self._next = now + self._interval_s
            metrics.DLQ_DEPTH.set(self._depth(consumer))
        except Exception as exc:
            log.info("dead-letter depth not refreshed: %s", exc)
        finally:
            self._lock.release()

    def _depth(self, consumer: Consumer) -> int:
        metadata = consumer.list_topics(self._topic, timeout=_WATERMARK_TIMEOUT_S)
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            raise RuntimeError(f"no metadata for {self._topic}")
        depth = 0
        for partition in topic.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self._topic, partition), timeout=_WATERMARK_TIMEOUT_S
            )
            depth += max(0, high - low)
        return depth
