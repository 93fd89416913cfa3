"""The worker checks every request field itself: direct publishers skip the API's checks."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from core.errors import InvalidImageError, InvalidRequestError
from inference_consumer.errors import ReplyUndeliverableError
from inference_consumer.jobs import ReplyAddress
from inference_consumer.validation import (
    InvalidReplyAddressError,
    ReplyTopicPartitions,
    RequestRules,
    check_request,
    reply_address,
)
from schemas import CaptionRequest
from tests.support.kafka import caption_request

RULES = RequestRules(own_topics=frozenset(["captioner.requests", "captioner.requests.dlq"]))


def request(**fields: Any) -> CaptionRequest:
    return replace(caption_request(b"img", reply_topic="results"), **fields)


def four_partitions(_topic: str) -> int:
    return 4


def test_a_good_request_has_its_reply_address() -> None:
    assert reply_address(request(reply_partition=3), RULES, four_partitions) == ReplyAddress("results", 3)
    assert reply_address(request(), RULES, four_partitions) == ReplyAddress("results", None)


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
