"""The worker checks every request field itself: direct publishers skip the API's checks."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from core.errors import InvalidImageError, InvalidRequestError
from core.settings import TopicSettings
from inference_consumer.errors import ReplyUndeliverableError
from inference_consumer.jobs import ReplyAddress
from inference_consumer.validation import (
    InvalidReplyAddressError,
    ReplyTopicPartitions,
    RequestRules,
    check_request,
    reply_address,
    undecodable_reply_address,
)
from schemas import CaptionRequest
from tests.support.kafka import caption_request

RULES = RequestRules(own_topics=frozenset(["captioner.requests", "captioner.requests.dlq"]))


def request(**fields: Any) -> CaptionRequest:
    return replace(caption_request(b"img", reply_topic="results"), **fields)


def four_partitions(_topic: str) -> int:
    return 4


def test_a_good_request_has_its_reply_address() -> None:
    good = request(reply_partition=3)
    assert reply_address(good, RULES, four_partitions) == ReplyAddress("results", 3, good.correlation_id)
    good = request()
    assert reply_address(good, RULES, four_partitions) == ReplyAddress("results", None, good.correlation_id)


@pytest.mark.parametrize(
    "fields",
    [
        {"reply_partition": 999},
        {"reply_partition": 4},
        {"reply_partition": -5},
        {"reply_topic": ""},
        {"reply_topic": "a b"},
        {"reply_topic": ".."},
        {"reply_topic": "x" * 250},
        {"reply_topic": "captioner.requests"},
        {"reply_topic": "captioner.requests.dlq"},
        {"correlation_id": ""},
        {"correlation_id": "x" * 129},
        {"correlation_id": "a\nb"},
    ],
)
def test_a_bad_reply_address_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidReplyAddressError):
        reply_address(request(**fields), RULES, four_partitions)


def test_the_reply_topic_pattern_is_a_full_match() -> None:
    rules = replace(RULES, reply_topic_pattern=re.compile(r"results|captioner\.replies"))
    assert reply_address(request(), rules, four_partitions).topic == "results"
    with pytest.raises(InvalidReplyAddressError):
        reply_address(request(reply_topic="results2"), rules, four_partitions)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"max_new_tokens": 0}, InvalidRequestError),
        ({"max_new_tokens": -3}, InvalidRequestError),
        ({"content_type": "text/html"}, InvalidRequestError),
        ({"content_type": "image/png" + " " * 200}, InvalidRequestError),
        ({"content_type": "application/postscript"}, InvalidRequestError),
        ({"image": b""}, InvalidImageError),
    ],
)
def test_bad_fields_are_refused(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        check_request(request(**fields))


@pytest.mark.parametrize(
    "content_type", ["image/png", "IMAGE/JPEG; charset=binary", "application/octet-stream"]
)
def test_accepted_content_types(content_type: str) -> None:
    check_request(request(content_type=content_type, max_new_tokens=5))


class FakeMetadata:
    def __init__(self, topics: dict[str, Any]) -> None:
        self.topics = topics


class FakeTopic:
    def __init__(self, partitions: int, error: KafkaError | None = None) -> None:
        self.partitions = dict.fromkeys(range(partitions))
        self.error = error


class MetadataProducer:
    def __init__(self) -> None:
        self.lookups: list[str] = []
        self.down = False

    def list_topics(self, topic: str, timeout: float) -> FakeMetadata:
        self.lookups.append(topic)
        if self.down:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        if topic == "results":
            return FakeMetadata({topic: FakeTopic(4)})
        return FakeMetadata({topic: FakeTopic(0, KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))})


def test_partition_counts_come_from_metadata_cached_and_bounded() -> None:
    producer = MetadataProducer()
    partitions = ReplyTopicPartitions(producer=producer, max_topics=2)  # type: ignore[arg-type]

    assert partitions("results") == 4
    assert partitions("results") == 4
    assert producer.lookups == ["results"]
    for missing in ("gone-1", "gone-2", "gone-3"):
        with pytest.raises(ReplyUndeliverableError):
            partitions(missing)
    assert len(partitions._known) == 2


def test_an_unreachable_broker_leaves_the_count_unknown() -> None:
    producer = MetadataProducer()
    producer.down = True
    assert ReplyTopicPartitions(producer=producer)("results") is None  # type: ignore[arg-type]


SPRING_ID = bytes(range(16))


def spring(
    topic: bytes = b"spring.replies", partition: bytes | None = None, **more: bytes
) -> dict[str, bytes]:
    headers = {"kafka_replyTopic": topic, "kafka_correlationId": SPRING_ID, **more}
    return headers if partition is None else headers | {"kafka_replyPartition": partition}


def test_spring_reply_headers_take_the_place_of_the_bodys_address() -> None:
    good = request(reply_partition=3)

    address = reply_address(good, RULES, four_partitions, spring(partition=(2).to_bytes(4, "big")))

    assert address == ReplyAddress(
        "spring.replies", 2, good.correlation_id, (("kafka_correlationId", SPRING_ID),)
    )
    assert reply_address(good, RULES, four_partitions, spring()).partition is None  # the key chooses


def test_a_spring_correlation_id_alone_is_copied_to_the_bodys_address() -> None:
    good = request()

    address = reply_address(good, RULES, four_partitions, {"kafka_correlationId": SPRING_ID})

    assert (address.topic, address.headers) == ("results", (("kafka_correlationId", SPRING_ID),))


HOSTILE_SPRING_HEADERS = [
    pytest.param(spring(b"a b"), id="illegal-topic"),
    pytest.param(spring(b"captioner.requests"), id="own-topic"),
    pytest.param(spring(b"x" * 250), id="long-topic"),
    pytest.param(spring(b"x" * 1_000_000), id="huge-topic"),
    pytest.param(spring("r\u00e9plies".encode()), id="non-ascii-topic"),
    pytest.param(spring(b""), id="empty-topic"),
    pytest.param(spring(partition=(4).to_bytes(4, "big")), id="partition-out-of-range"),
    pytest.param(spring(partition=(-1).to_bytes(4, "big", signed=True)), id="negative-partition"),
    pytest.param(spring(partition=b"\x00\x00\x01"), id="3-byte-partition"),
    pytest.param(spring(partition=b"1"), id="ascii-partition"),
    pytest.param(spring(partition=bytes(1_000_000)), id="huge-partition"),
    pytest.param({"kafka_replyPartition": (1).to_bytes(4, "big")}, id="partition-without-topic"),
    pytest.param(spring(kafka_correlationId=b""), id="empty-correlation-id"),
    pytest.param(spring(kafka_correlationId=bytes(257)), id="long-correlation-id"),
]


@pytest.mark.parametrize("headers", HOSTILE_SPRING_HEADERS)
def test_hostile_spring_headers_are_an_invalid_reply_address(headers: dict[str, bytes]) -> None:
    with pytest.raises(InvalidReplyAddressError):
        reply_address(request(), RULES, four_partitions, headers)
    assert undecodable_reply_address(b"job-1", headers, RULES, four_partitions) is None


def test_the_reply_topic_pattern_binds_spring_headers_too() -> None:
    rules = replace(RULES, reply_topic_pattern=re.compile(r"results"))
    with pytest.raises(InvalidReplyAddressError, match="kafka_replyTopic"):
        reply_address(request(), rules, four_partitions, spring())


def test_an_undecodable_record_is_answered_where_its_spring_headers_say() -> None:
    headers = spring(partition=(1).to_bytes(4, "big"))
    copied = (("kafka_correlationId", SPRING_ID),)

    assert undecodable_reply_address(b"job-1", headers, RULES, four_partitions) == ReplyAddress(
        "spring.replies", 1, "job-1", copied
    )
    # A key that is no correlation id leaves the reply's empty: the header is what Spring matches.
    for key in (None, b"", b"a b", b"x" * 129, b"\xff"):
        address = undecodable_reply_address(key, headers, RULES, four_partitions)
        assert address == ReplyAddress("spring.replies", 1, "", copied)


def test_an_undecodable_record_gets_no_reply_that_nobody_could_match_or_that_has_no_address() -> None:
    no_spring_id = {"kafka_replyTopic": b"spring.replies"}
    assert undecodable_reply_address(None, no_spring_id, RULES, four_partitions) is None
    assert undecodable_reply_address(b"job-1", no_spring_id, RULES, four_partitions) is not None
    assert (
        undecodable_reply_address(b"job-1", {"kafka_correlationId": SPRING_ID}, RULES, four_partitions)
        is None
    )
    assert undecodable_reply_address(b"job-1", {}, RULES, four_partitions) is None


def test_an_undecodable_records_missing_reply_topic_is_no_address() -> None:
    def missing(_topic: str) -> int | None:
        raise ReplyUndeliverableError("reply_topic does not exist")

    assert undecodable_reply_address(b"job-1", spring(), RULES, missing) is None


@pytest.mark.parametrize(
    "topic",
    ["captioner.requests", "captioner.requests.retry.2", "captioner.requests.dlq", "captioner.captions"],
)
def test_a_worker_never_replies_to_its_job_topics_or_the_caption_cache(topic: str) -> None:
    rules = RequestRules.for_topics(TopicSettings(), reply_topic_pattern=None)

    with pytest.raises(InvalidReplyAddressError):
        reply_address(request(reply_topic=topic), rules, lambda _topic: 4)
