"""The worker's own check of every request field. The request topic is a public entry point: what
the API checked, a direct publisher may not have, so nothing is trusted because of where it came from.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from confluent_kafka import KafkaError, KafkaException, Producer

from core.errors import InvalidImageError, InvalidRequestError
from core.images import ACCEPTED_CONTENT_TYPES
from core.settings import TopicSettings
from inference_consumer.errors import ReplyUndeliverableError
from inference_consumer.jobs import ReplyAddress, legal_topic_name
from inference_consumer.spring import CORRELATION_ID as SPRING_CORRELATION_ID
from inference_consumer.spring import REPLY_PARTITION as SPRING_REPLY_PARTITION
from inference_consumer.spring import REPLY_TOPIC as SPRING_REPLY_TOPIC
from inference_consumer.spring import MalformedSpringHeaderError, SpringReply, spring_reply
from schemas import CaptionRequest

log = logging.getLogger(__name__)

_MAX_CORRELATION_ID = 128
CORRELATION_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{_MAX_CORRELATION_ID}}}")
MAX_CONTENT_TYPE_LENGTH = 127

PartitionCount = Callable[[str], int | None]

_NO_HEADERS: Mapping[str, bytes] = MappingProxyType({})
# What named the reply topic and partition, for an error's message.
_BODY_NAMES = ("reply_topic", "reply_partition")
_SPRING_NAMES = (f"{SPRING_REPLY_TOPIC} header", f"{SPRING_REPLY_PARTITION} header")


class InvalidReplyAddressError(InvalidRequestError):
    """The request names no reply address we may write to: it ends in the dead-letter topic only."""

    code = "invalid_reply_address"


@dataclass(frozen=True, slots=True)
class RequestRules:
    # Topics a reply must never go to: the job topics (a reply there would be read as a job) and the
    # caption cache (a reply there would be a record its readers skip, from a principal that may write it).
    own_topics: frozenset[str]
    reply_topic_pattern: re.Pattern[str] | None = None

    @classmethod
    def for_topics(
        cls, topics: TopicSettings, *, reply_topic_pattern: re.Pattern[str] | None
    ) -> RequestRules:
        own = [topics.requests, *topics.retry_topics, topics.dead_letter, topics.captions]
        return cls(own_topics=frozenset(own), reply_topic_pattern=reply_topic_pattern)


def reply_address(
    request: CaptionRequest,
    rules: RequestRules,
    partitions: PartitionCount,
    headers: Mapping[str, bytes] = _NO_HEADERS,
) -> ReplyAddress:
    """Where the reply may go, or an error naming why it may not (then no reply is written). Spring's
    kafka_replyTopic (and kafka_replyPartition), when present, take the place of reply_topic and
    reply_partition: a ReplyingKafkaTemplate listens where its headers say, whatever the body names."""
    if CORRELATION_ID.fullmatch(request.correlation_id) is None:
        raise InvalidReplyAddressError("correlation_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    spring = _spring_headers(headers)
    if spring.topic is None:
        topic, partition, source = request.reply_topic, request.reply_partition, _BODY_NAMES
    else:
        topic, partition, source = spring.topic, spring.partition, _SPRING_NAMES
    _check_destination(topic, partition, rules, partitions, source=source)
    return ReplyAddress(topic, partition, request.correlation_id, _copied(spring))


def undecodable_reply_address(
    key: bytes | None, headers: Mapping[str, bytes], rules: RequestRules, partitions: PartitionCount
) -> ReplyAddress | None:
    """For a record whose value does not decode: the address its Spring headers give, so that its
    sender learns at once instead of timing out. None when they give none that is valid, or when
    nothing would let the sender match the reply (neither a kafka_correlationId nor a valid key)."""
    correlation_id = key[: _MAX_CORRELATION_ID + 1].decode("ascii", "replace") if key is not None else ""
    if CORRELATION_ID.fullmatch(correlation_id) is None:
        correlation_id = ""
    try:
        spring = _spring_headers(headers)
        if spring.topic is None or not (correlation_id or spring.correlation_id):
            return None
        _check_destination(spring.topic, spring.partition, rules, partitions, source=_SPRING_NAMES)
    except (InvalidReplyAddressError, ReplyUndeliverableError):
        return None
    return ReplyAddress(spring.topic, spring.partition, correlation_id, _copied(spring))


def _spring_headers(headers: Mapping[str, bytes]) -> SpringReply:
    try:
        return spring_reply(headers)
    except MalformedSpringHeaderError as exc:
        raise InvalidReplyAddressError(str(exc)) from None


def _copied(spring: SpringReply) -> tuple[tuple[str, bytes], ...]:
    return () if spring.correlation_id is None else ((SPRING_CORRELATION_ID, spring.correlation_id),)


def _check_destination(
    topic: str,
    partition: int | None,
    rules: RequestRules,
    partitions: PartitionCount,
    *,
    source: tuple[str, str],
) -> None:
    topic_source, partition_source = source
    if not legal_topic_name(topic):
        raise InvalidReplyAddressError(f"{topic_source} is not a legal Kafka topic name")
    if topic in rules.own_topics:
        raise InvalidReplyAddressError(f"{topic_source} names one of the service's own job topics")
    if rules.reply_topic_pattern is not None and rules.reply_topic_pattern.fullmatch(topic) is None:
        raise InvalidReplyAddressError(f"{topic_source} is not one this service writes replies to")
    count = partitions(topic)
    if partition is not None and (partition < 0 or (count is not None and partition >= count)):
        raise InvalidReplyAddressError(f"{partition_source} {partition} does not exist in the reply topic")


def check_request(request: CaptionRequest) -> None:
    """The fields that decide the work, once the reply address is known to be good."""
    if request.max_new_tokens is not None and request.max_new_tokens < 1:
        raise InvalidRequestError("max_new_tokens must be at least 1")
    content_type = request.content_type.partition(";")[0].strip().lower()
    if len(request.content_type) > MAX_CONTENT_TYPE_LENGTH or content_type not in ACCEPTED_CONTENT_TYPES:
        raise InvalidRequestError(f"content_type must be one of {', '.join(sorted(ACCEPTED_CONTENT_TYPES))}")
    if not request.image:
        raise InvalidImageError("image is empty")


class ReplyTopicPartitions:
    """Partition counts of reply topics from the producer's metadata, cached and bounded in size (a
    hostile stream could name a new topic in every record). A topic the broker says does not exist
    raises ReplyUndeliverableError; when the broker cannot be asked, the count is unknown (None) and
    the produce itself is the judge. Thread-safe: both of a worker's feeders share one."""

    def __init__(
        self,
        *,
        producer: Producer,
        timeout_s: float = 5.0,
        ttl_s: float = 60.0,
        missing_ttl_s: float = 10.0,
        max_topics: int = 1024,
    ) -> None:
        self._producer = producer
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._missing_ttl_s = missing_ttl_s
        self._max_topics = max_topics
        # topic -> (expires, partition count; 0 = no such topic)
        self._known: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, topic: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            cached = self._known.get(topic)
        count = cached[1] if cached is not None and cached[0] > now else self._look_up(topic, now)
        if count == 0:
            raise ReplyUndeliverableError("reply_topic does not exist")
        return count

    def _look_up(self, topic: str, now: float) -> int | None:
        try:
            described = self._producer.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
        except KafkaException as exc:
            log.warning("cannot look up reply topic %s: %s", topic, exc)
            return None
        if described is not None and described.error is not None:
            if described.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None  # a leader election, say: ask again next time
            described = None
        count = 0 if described is None else len(described.partitions)
        with self._lock:
            self._known[topic] = (now + (self._ttl_s if count else self._missing_ttl_s), count)
            self._known.move_to_end(topic)
            while len(self._known) > self._max_topics:
                self._known.popitem(last=False)
        return count
