"""Outcome records with a stand-in producer: which topic, which headers, which offsets finish."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from core.logs import JobContextFilter
from core.offsets import OffsetTracker
from core.settings import TopicSettings
from inference_consumer.delivery import DirectSink
from inference_consumer.errors import InferenceError, InvalidImageError
from inference_consumer.jobs import Job, ReplyAddress
from inference_consumer.outcomes import OutcomePublisher
from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionRequest, ReplyStatus, UnknownFingerprintError
from schemas import headers as record_headers


@dataclass
class RecordingProducer:
    """Captures produce() calls; deliver() acknowledges them like the broker would."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.sent.append({"topic": topic, **kwargs})

    def deliver(self) -> None:
        for record in self.sent:
            if callback := record.pop("on_delivery", None):
                callback(None, None)

    def to(self, topic: str) -> list[dict[str, Any]]:
        return [record for record in self.sent if record["topic"] == topic]


@pytest.fixture
def topics() -> TopicSettings:
    return TopicSettings(retry_delays_s=(1.0, 2.0))


def make_job(*, attempt: int = 1, extra_headers: dict[str, bytes] | None = None, offset: int = 7) -> Job:
    now = datetime.now(UTC)
    request = CaptionRequest(
        correlation_id="c-1",
        image=b"img",
        content_type="image/png",
        reply_topic="results",
        reply_partition=2,
        deadline=now + timedelta(seconds=30),
        created_at=now,
    )
    headers = {record_headers.ATTEMPT: str(attempt).encode(), **(extra_headers or {})}
    value = REQUEST_CODEC.encode(request)
    return Job(
        "captioner.requests",
        3,
        offset,
        b"c-1",
        value,
        headers,
        1234,
        attempt=attempt,
        request=request,
        reply_to=ReplyAddress("results", 2, "c-1"),
    )


def make_publisher(topics: TopicSettings) -> tuple[OutcomePublisher, RecordingProducer, OffsetTracker]:
    producer, tracker = RecordingProducer(), OffsetTracker()
    publisher = OutcomePublisher(
        sink=DirectSink(producer),  # type: ignore[arg-type]
        tracker=tracker,
        topics=topics,
        model_name="m",
        worker_id="w-1",
        group_id="g",
    )
    return publisher, producer, tracker


def test_success_replies_where_asked_and_finishes_after_delivery(topics: TopicSettings) -> None:
    publisher, producer, tracker = make_publisher(topics)
    job = make_job()
    tracker.track(job.topic, job.partition, job.offset)

    publisher.succeeded(job, "a title", inference_ms=5)
    assert tracker.take_positions() == []  # not before the broker acknowledged the reply
    producer.deliver()

    [reply] = producer.to("results")
    assert reply["partition"] == 2 and reply["key"] == b"c-1"
    assert REPLY_CODEC.decode(reply["value"]).title == "a title"
    assert [(tp.partition, tp.offset) for tp in tracker.take_positions()] == [(3, 8)]


def test_transient_failure_goes_to_the_next_retry_tier_with_original_bytes(topics: TopicSettings) -> None:
    publisher, producer, _ = make_publisher(topics)
    job = make_job(attempt=2)

    publisher.failed(job, InferenceError("boom"))

    [retry] = producer.to(topics.retry_topic(2))
    assert retry["value"] == job.value
    headers = dict(retry["headers"])
    assert headers[record_headers.ATTEMPT] == b"3"
    assert headers[record_headers.ORIGINAL_OFFSET] == b"7"
    assert int(headers[record_headers.RETRY_DUE_MS]) > 0
    [notice] = producer.to("results")
    assert REPLY_CODEC.decode(notice["value"]).status is ReplyStatus.RETRYING


def test_exhausted_and_permanent_failures_go_to_the_dlq(topics: TopicSettings) -> None:
    publisher, producer, _ = make_publisher(topics)

    publisher.failed(make_job(attempt=3), InferenceError("still broken"))
    publisher.failed(make_job(offset=8), InvalidImageError("garbage"))

    dead = producer.to(topics.dead_letter)
    assert [dict(record["headers"])[record_headers.DLQ_ERROR_CODE] for record in dead] == [
        b"inference_failed",
        b"invalid_image",
    ]
    replies = [REPLY_CODEC.decode(record["value"]) for record in producer.to("results")]
    assert [reply.status for reply in replies] == [ReplyStatus.FAILED, ReplyStatus.FAILED]
    assert [reply.error.retriable for reply in replies if reply.error] == [True, False]


def test_replay_marker_cache_scope_and_foreign_headers_survive_every_hop(topics: TopicSettings) -> None:
    publisher, producer, _ = make_publisher(topics)
    carried = {
        record_headers.REPLAYED_FROM: b"dlq:0:4",
        record_headers.CACHE_SCOPE: b"0123456789abcdef" * 2,  # a later attempt's title is the caller's
        "traceparent": b"00-abc-def-01",
    }
    job = make_job(extra_headers={**carried, record_headers.RETRY_DUE_MS: b"1"})

    publisher.failed(job, InferenceError("boom"))
    publisher.failed(job, InvalidImageError("garbage"))

    for record in producer.to(topics.retry_topic(1)) + producer.to(topics.dead_letter):
        headers = dict(record["headers"])
        assert {name: headers[name] for name in carried} == carried


class RefusingProducer(RecordingProducer):
    """produce() raises for some topics as librdkafka does when it knows a topic does not exist."""

    def __init__(self, refused: set[str], *, full_queue_times: int = 0) -> None:
        super().__init__()
        self.refused = refused
        self.full_queue_times = full_queue_times
        self.polls = 0

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.full_queue_times:
            self.full_queue_times -= 1
            raise BufferError("Local: Queue full")
        if topic in self.refused:
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))
        super().produce(topic, **kwargs)

    def poll(self, _timeout: float = 0) -> int:
        self.polls += 1
        return 0


def publisher_with(producer: RecordingProducer, topics: TopicSettings) -> tuple[OutcomePublisher, list[str]]:
    fatal: list[str] = []
    publisher = OutcomePublisher(
        sink=DirectSink(producer),  # type: ignore[arg-type]
        tracker=OffsetTracker(),
        topics=topics,
        model_name="m",
        worker_id="w-1",
        group_id="g",
        on_fatal=fatal.append,
    )
    return publisher, fatal


def test_replies_to_a_topic_that_does_not_exist_go_to_the_dlq_every_time(topics: TopicSettings) -> None:
    producer = RefusingProducer({"results"})
    publisher, fatal = publisher_with(producer, topics)

    publisher.succeeded(make_job(offset=1), "a title", inference_ms=1)
    publisher.succeeded(make_job(offset=2), "a title", inference_ms=1)

    dead = producer.to(topics.dead_letter)
    assert [dict(r["headers"])[record_headers.DLQ_ERROR_CODE] for r in dead] == [b"reply_undeliverable"] * 2
    assert fatal == []


def test_a_full_local_queue_is_waited_out(topics: TopicSettings) -> None:
    producer = RefusingProducer(set(), full_queue_times=3)
    publisher, _ = publisher_with(producer, topics)

    publisher.succeeded(make_job(), "a title", inference_ms=1)

    assert producer.polls == 3 and len(producer.to("results")) == 1


def test_a_refused_retry_record_becomes_a_dead_letter(topics: TopicSettings) -> None:
    producer = RefusingProducer({topics.retry_topic(1)})
    publisher, fatal = publisher_with(producer, topics)

    publisher.failed(make_job(), InferenceError("boom"))

    assert len(producer.to(topics.dead_letter)) == 1 and fatal == []


def test_a_dead_letter_topic_that_refuses_stops_the_worker(topics: TopicSettings) -> None:
    producer = RefusingProducer({topics.dead_letter})
    publisher, fatal = publisher_with(producer, topics)

    publisher.failed(make_job(), InvalidImageError("garbage"))

    assert len(fatal) == 1 and topics.dead_letter in fatal[0]


def test_replies_carry_a_plain_message_and_dead_letters_the_detail(topics: TopicSettings) -> None:
    publisher, producer, _ = make_publisher(topics)
    detail = "OSError('cannot identify image file <_io.BytesIO object at 0x7f00>')"

    publisher.failed(make_job(), InvalidImageError("the bytes are not a decodable image", detail=detail))
    publisher.failed(make_job(offset=8), KeyError("/srv/app/secret.py"))

    replies = [REPLY_CODEC.decode(record["value"]) for record in producer.to("results")]
    messages = [reply.error.message for reply in replies if reply.error]
    assert messages == ["the bytes are not a decodable image", "the worker failed on this job"]
    assert [reply.error.code for reply in replies if reply.error] == ["invalid_image", "internal_error"]
    dead_messages = [
        dict(r["headers"])[record_headers.DLQ_ERROR_MESSAGE] for r in producer.to(topics.dead_letter)
    ]
    assert b"object at 0x7f00" in dead_messages[0]  # operators still see what Pillow said


def test_a_job_without_a_valid_reply_address_only_goes_to_the_dlq(topics: TopicSettings) -> None:
    publisher, producer, _ = make_publisher(topics)
    job = make_job()
    job.reply_to = None

    publisher.failed(job, InvalidImageError("garbage"))

    assert producer.to("results") == [] and len(producer.to(topics.dead_letter)) == 1


def test_a_retry_refused_at_once_tells_the_caller_failed_and_nothing_after(topics: TopicSettings) -> None:
    producer = RefusingProducer({topics.retry_topic(1)})
    publisher, _ = publisher_with(producer, topics)

    publisher.failed(make_job(), InferenceError("boom"))

    statuses = [REPLY_CODEC.decode(record["value"]).status for record in producer.to("results")]
    assert statuses == [ReplyStatus.FAILED]


class FailingDeliveryProducer(RefusingProducer):
    def deliver_error(self, code: int) -> None:
        for record in list(self.sent):
            if callback := record.pop("on_delivery", None):
                callback(KafkaError(code), None)


def test_follow_ups_of_a_failed_delivery_wait_for_the_next_serve(topics: TopicSettings) -> None:
    producer = FailingDeliveryProducer(set())
    publisher, _ = publisher_with(producer, topics)
    publisher.failed(make_job(), InvalidImageError("garbage"))

    producer.deliver_error(KafkaError._MSG_TIMED_OUT)  # inside the producer's poll: no produce here
    assert len(producer.to(topics.dead_letter)) == 1

    publisher.serve()
    assert len(producer.to(topics.dead_letter)) == 2  # sent again from the loop's thread


def test_a_failed_delivery_is_logged_with_its_jobs_correlation_id(
    topics: TopicSettings, caplog: pytest.LogCaptureFixture
) -> None:
    producer = FailingDeliveryProducer(set())
    publisher, _ = publisher_with(producer, topics)
    publisher.failed(make_job(), InvalidImageError("garbage"))
    caplog.handler.addFilter(JobContextFilter())

    with caplog.at_level(logging.WARNING, logger="inference_consumer.outcomes"):
        producer.deliver_error(KafkaError._MSG_TIMED_OUT)  # on the polling thread: no job context around
        publisher.serve()  # the follow-up, on a loop's thread: no job context around either

    [line] = [record for record in caplog.records if "could not write" in record.getMessage()]
    assert getattr(line, "correlation_id", None) == "c-1"


SPRING_ID = (b"\x00" * 3) + b"\xff" * 13  # Spring's default: a UUID's 16 raw bytes


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(lambda publisher, job: publisher.succeeded(job, "t", inference_ms=1), id="succeeded"),
        pytest.param(lambda publisher, job: publisher.failed(job, InferenceError("x")), id="retrying"),
        pytest.param(lambda publisher, job: publisher.failed(job, InvalidImageError("x")), id="failed"),
    ],
)
def test_every_reply_carries_the_addresss_headers(topics: TopicSettings, outcome: Any) -> None:
    publisher, producer, _ = make_publisher(topics)
    job = make_job()
    job.reply_to = ReplyAddress("results", None, "c-1", (("kafka_correlationId", SPRING_ID),))

    outcome(publisher, job)

    [reply] = producer.to("results")
    assert ("kafka_correlationId", SPRING_ID) in reply["headers"]


def test_an_undecodable_record_with_a_reply_address_gets_a_failed_reply(topics: TopicSettings) -> None:
    publisher, producer, _ = make_publisher(topics)
    job = make_job()
    job.request, job.value = None, b"\xc3\x01garbage"
    job.reply_to = ReplyAddress("results", 1, "", (("kafka_correlationId", SPRING_ID),))

    publisher.failed(job, UnknownFingerprintError(b"garbage", "CaptionRequest"))

    [dead] = producer.to(topics.dead_letter)
    assert dead["value"] == job.value and dead["key"] == b"c-1"
    [reply] = producer.to("results")
    decoded = REPLY_CODEC.decode(reply["value"])
    assert decoded.status is ReplyStatus.FAILED and decoded.error is not None
    assert (decoded.correlation_id, decoded.error.code) == ("", "unknown_fingerprint")
    assert reply["key"] is None and reply["partition"] == 1
    assert ("kafka_correlationId", SPRING_ID) in reply["headers"]
