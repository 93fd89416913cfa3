"""Callers that skip the HTTP API: they publish CaptionRequests straight to the request topic, as another
system would, and read their replies from a reply topic of their own. After the run every reply topic is read
back with read_committed, so a job that reached its caller twice (two final replies) shows."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from core.kafka_config import READ_COMMITTED
from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionerError, CaptionReply, CaptionRequest, ReplyStatus

REPLY_PARTITIONS = 3
_DEADLINE_S = 120.0  # no HTTP client waits on these: a generous deadline of their own
_READ_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class KafkaJob:
    id: str
    image: int
    due: float  # time.monotonic() when it was published


@dataclass(frozen=True)
class KafkaOutcomes:
    """The Kafka callers' jobs among some requests: each needs a SUCCEEDED reply with its image's title."""

    sent: int
    answered: int  # a SUCCEEDED reply with the right title
    lost: int  # no SUCCEEDED reply
    wrong_title: int  # SUCCEEDED replies, none with the right title


def takes(index: int, share: float) -> bool:
    """Whether request `index` goes over Kafka: spread evenly, `share` of all requests."""
    return int((index + 1) * share) > int(index * share)


def final_reply_counts(replies: Iterable[CaptionReply]) -> Counter[str]:
    """Per correlation id, how many final replies (anything but RETRYING) the reply topics hold."""
    return Counter(reply.correlation_id for reply in replies if reply.status != ReplyStatus.RETRYING)


def duplicate_replies(ids: Iterable[str | None], finals: Counter[str]) -> int:
    """Jobs among `ids` with more than one final reply."""
    return sum(1 for job_id in set(ids) if job_id is not None and finals[job_id] > 1)


def kafka_outcomes(
    jobs: Sequence[KafkaJob], replies: Iterable[CaptionReply], titles: Sequence[str]
) -> KafkaOutcomes:
    succeeded: dict[str, set[str | None]] = {}
    for reply in replies:
        if reply.status == ReplyStatus.SUCCEEDED:
            succeeded.setdefault(reply.correlation_id, set()).add(reply.title)
    answered = sum(1 for job in jobs if titles[job.image] in succeeded.get(job.id, set()))
    lost = sum(1 for job in jobs if job.id not in succeeded)
    return KafkaOutcomes(
        sent=len(jobs), answered=answered, lost=lost, wrong_title=len(jobs) - answered - lost
    )


class KafkaCallers:
    """Publishes the Kafka callers' requests (from the traffic's thread; produce() does not block)."""

    def __init__(
        self, *, config: dict[str, Any], run_id: str, requests_topic: str, images: Sequence[bytes]
    ) -> None:
        self.reply_topic = f"{run_id}.kafka-callers.replies"
        self.jobs: list[KafkaJob] = []
        self._run_id = run_id
        self._requests_topic = requests_topic
        self._images = images
        self._config = config | {"logger": _quiet_logger()}
        self._producer: Producer | None = None

    def start(self) -> None:
        admin = AdminClient(self._config)
        new = NewTopic(self.reply_topic, num_partitions=REPLY_PARTITIONS, replication_factor=3)
        for future in admin.create_topics([new], request_timeout=30).values():
            future.result()
        self._producer = Producer(self._config | {"acks": "all", "enable.idempotence": True})

    def send(self, index: int, image: int, due: float) -> None:
        assert self._producer is not None, "start() first"
        job = KafkaJob(id=f"{self._run_id}-kafka-{index}", image=image, due=due)
        request = CaptionRequest(
            correlation_id=job.id,
            image=self._images[image],
            content_type="image/jpeg",
            reply_topic=self.reply_topic,
            # some callers name a reply partition, others leave it to the worker
            reply_partition=None if index % (REPLY_PARTITIONS + 1) == REPLY_PARTITIONS else index % 3,
            deadline=datetime.now(UTC) + timedelta(seconds=_DEADLINE_S),
        )
        self._producer.produce(self._requests_topic, REQUEST_CODEC.encode(request), key=job.id)
        self._producer.poll(0)
        self.jobs.append(job)

    def stop(self) -> None:
        if self._producer is not None and self._producer.flush(30) > 0:
            raise RuntimeError("some Kafka callers' requests were never delivered")


def read_replies(config: dict[str, Any], topics: Sequence[str]) -> list[CaptionReply]:
    """Every committed reply on `topics`, from the beginning until each partition's end (read_committed:
    aborted transactions' replies are not what a caller sees)."""
    consumer = Consumer(
        config
        | READ_COMMITTED
        | {
            "group.id": "chaos-reply-reader",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "logger": _quiet_logger(),
        }
    )
    replies: list[CaptionReply] = []
    try:
        metadata = consumer.list_topics(timeout=10)
        assigned = [
            TopicPartition(topic, partition, 0)
            for topic in topics
            for partition in metadata.topics[topic].partitions
        ]
        consumer.assign(assigned)
        open_partitions = {(tp.topic, tp.partition) for tp in assigned}
        give_up = time.monotonic() + _READ_TIMEOUT_S
        while open_partitions:
            if time.monotonic() > give_up:
                raise RuntimeError(f"reply partitions not read to their end: {sorted(open_partitions)}")
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard((message.topic(), message.partition()))
                continue
            try:
                replies.append(REPLY_CODEC.decode(message.value() or b""))
            except CaptionerError:
                continue  # not a reply of this run's: it cannot count for any job
    finally:
        consumer.close()
    return replies


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("chaos.librdkafka")
    logger.setLevel(logging.CRITICAL)
    return logger
