"""Plain confluent-kafka clients for tests: publish like another system would (with the project's producer
config, so keys choose partitions as they do in the service), read a topic back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from core.kafka_config import producer_config
from core.settings import KafkaSettings, TopicSettings
from schemas import REQUEST_CODEC, CaptionRequest


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def publish(
    bootstrap: str,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    partition: int = -1,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    producer = Producer(producer_config(kafka, TopicSettings(), client_id="test-publisher"))
    producer.produce(topic, value=value, key=key, partition=partition, headers=headers or [])
    assert producer.flush(15) == 0, "record was not delivered"


def caption_request(
    image: bytes, *, reply_topic: str, deadline_s: float = 60, **fields: object
) -> CaptionRequest:
    now = datetime.now(UTC)
    return CaptionRequest(
        correlation_id=str(fields.pop("correlation_id", uuid.uuid4().hex)),
        image=image,
        content_type="image/png",
        reply_topic=reply_topic,
        deadline=now + timedelta(seconds=deadline_s),
        created_at=now,
        **fields,  # type: ignore[arg-type]
    )


def publish_requests(
    bootstrap: str, topic: str, requests: list[CaptionRequest], *, partition: int = -1
) -> None:
    """In one go, so that they arrive together."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    producer = Producer(producer_config(kafka, TopicSettings(), client_id="test-publisher"))
    for request in requests:
        producer.produce(
            topic,
            value=REQUEST_CODEC.encode(request),
            key=request.correlation_id.encode(),
            partition=partition,
        )
    assert producer.flush(15) == 0, "records were not delivered"


def publish_request(bootstrap: str, topic: str, request: CaptionRequest, *, partition: int = -1) -> None:
    publish(
        bootstrap,
        topic,
        REQUEST_CODEC.encode(request),
        key=request.correlation_id.encode(),
        partition=partition,
    )


Isolation = Literal["read_committed", "read_uncommitted"]


def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Record]], bool],
    *,
    timeout_s: float = 60,
    isolation: Isolation = "read_committed",
) -> list[Record]:
    """Reads topic from the beginning until done(records) holds; fails on timeout. read_committed (what
    the service's readers and an outside consumer as documented see) leaves out the records of aborted
    transactions; read_uncommitted shows them too."""
    consumer = _plain_consumer(bootstrap, isolation=isolation)
    consumer.subscribe([topic])
    records: list[Record] = []
    give_up = time.monotonic() + timeout_s
    try:
        while not done(records):
            assert time.monotonic() < give_up, f"timed out reading {topic}: {len(records)} records"
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            records.append(_record(message))
    finally:
        consumer.close()
    return records


def _record(message: Message) -> Record:
    headers = {name: value for name, value in (message.headers() or []) if value is not None}
    return Record(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        message.key(),
        message.value() or b"",
        headers,
    )


def committed_offset(bootstrap: str, group_id: str, topic: str, partition: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    try:
        [committed] = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        return int(committed.offset)
    finally:
        consumer.close()


def _plain_consumer(
    bootstrap: str, group_id: str | None = None, *, isolation: Isolation = "read_committed"
) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id or f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )


def end_offsets(
    bootstrap: str, topic: str, partitions: int, *, isolation: Isolation = "read_committed"
) -> dict[int, int]:
    """Each partition's end: read_committed, the last stable offset (the first of a transaction still
    open, else the high watermark)."""
    consumer = _plain_consumer(bootstrap, isolation=isolation)
    try:
        return {
            partition: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            for partition in range(partitions)
        }
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = _plain_consumer(bootstrap, group_id)
    try:
        wanted = [TopicPartition(topic, partition) for partition in range(partitions)]
        return {tp.partition: int(tp.offset) for tp in consumer.committed(wanted, timeout=10)}
    finally:
        consumer.close()


def read_all(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    timeout_s: float = 60,
    isolation: Isolation = "read_committed",
) -> list[Record]:
    """Every record of topic up to its end offsets as of the call (read_committed: those of committed
    transactions; offsets that hold transaction markers or aborted records are passed over, not read)."""
    ends = end_offsets(bootstrap, topic, partitions, isolation=isolation)
    consumer = _plain_consumer(bootstrap, isolation=isolation)
    wanted = {partition: end for partition, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in wanted])
    records: list[Record] = []
    give_up = time.monotonic() + timeout_s
    try:
        while wanted:
            assert time.monotonic() < give_up, f"timed out reading {topic}: {len(records)} records"
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                records.append(_record(message))
            positions = consumer.position([TopicPartition(topic, partition) for partition in wanted])
            for position in positions:
                if position.offset >= wanted[position.partition]:
                    del wanted[position.partition]
    finally:
        consumer.close()
    return records
