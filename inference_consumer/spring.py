"""Spring Kafka's request-reply headers, read so that a `ReplyingKafkaTemplate.sendAndReceive` caller gets
its reply with no captioner-specific code: the reply goes where the headers say and carries the caller's
`kafka_correlationId` back, which is all the template matches replies by.

Every value is as hostile as the record's body: each is bounded and parsed here, and one that is present
but malformed is an error (the record then has no usable reply address), never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from inference_consumer.jobs import legal_topic_name

REPLY_TOPIC = "kafka_replyTopic"  # UTF-8 topic name
REPLY_PARTITION = "kafka_replyPartition"  # 4-byte big-endian int, as Spring writes it
CORRELATION_ID = "kafka_correlationId"  # opaque bytes (Spring's default: a UUID's 16 bytes), copied as is

MAX_TOPIC_BYTES = 249  # Kafka's own limit on a topic name
MAX_CORRELATION_ID_BYTES = 256


class MalformedSpringHeaderError(ValueError):
    """A Spring header is present but not what Spring writes; the message names it, for the caller."""


@dataclass(frozen=True, slots=True)
class SpringReply:
    topic: str | None  # None: no kafka_replyTopic, the request's own reply_topic applies
    partition: int | None  # None: the key chooses
    correlation_id: bytes | None  # put on every reply when set


def spring_reply(headers: Mapping[str, bytes]) -> SpringReply:
    """The Spring reply headers of a record (each absent one None); raises MalformedSpringHeaderError."""
    return SpringReply(
        topic=_topic(headers.get(REPLY_TOPIC)),
        partition=_partition(headers.get(REPLY_PARTITION), has_topic=REPLY_TOPIC in headers),
        correlation_id=_correlation_id(headers.get(CORRELATION_ID)),
    )


def _topic(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    name = raw[: MAX_TOPIC_BYTES + 1].decode("ascii", "replace")
    if len(raw) > MAX_TOPIC_BYTES or not legal_topic_name(name):
        raise MalformedSpringHeaderError(f"{REPLY_TOPIC} header is not a legal Kafka topic name")
    return name


def _partition(raw: bytes | None, *, has_topic: bool) -> int | None:
    if raw is None:
        return None
    if not has_topic:
        raise MalformedSpringHeaderError(f"{REPLY_PARTITION} header without a {REPLY_TOPIC} header")
    if len(raw) != 4:
        raise MalformedSpringHeaderError(f"{REPLY_PARTITION} header must be a 4-byte big-endian int")
    return int.from_bytes(raw, "big", signed=True)


def _correlation_id(raw: bytes | None) -> bytes | None:
    if raw is None:
        return None
    if not 0 < len(raw) <= MAX_CORRELATION_ID_BYTES:
        raise MalformedSpringHeaderError(
            f"{CORRELATION_ID} header must be 1-{MAX_CORRELATION_ID_BYTES} bytes long"
        )
    return raw
