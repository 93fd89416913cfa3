"""One HTTP request, one trace: the API's spans, the Kafka hop (the record's `traceparent` header) and
the worker's decode, inference and reply spans, all in process with the SDK's in-memory exporter. The
API runs with the fake publisher of tests/producer_api; the worker's per-record path (feeder, batch,
outcomes) runs on the record the API published, with a stand-in model and producer."""

from __future__ import annotations

import base64
import io
import json
import logging
import queue
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Message
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode, TraceState, format_span_id, format_trace_id
from opentelemetry.util.types import Attributes

from core.logs import log_handler
from core.offsets import OffsetTracker
from core.settings import ApiSettings, ImageSettings, KafkaSettings, TopicSettings, WorkerSettings
from core.tracing import (
    MAX_SPAN_TEXT_CHARS,
    UnrecordedTracer,
    extract_context,
    span_text,
    use_tracer_provider,
)
from inference_consumer.delivery import AutoCommits, DirectSink
from inference_consumer.errors import InvalidImageError
from inference_consumer.feeder import JobFeeder
from inference_consumer.jobs import Job
from inference_consumer.kafka_waits import KafkaWaits
from inference_consumer.outcomes import OutcomePublisher
from inference_consumer.validation import RequestRules
from inference_consumer.worker import InferenceWorker
from producer_api.app import SERVICE, make_api_app
from producer_api.replies import PendingReplies
from producer_api.service import CaptionService
from schemas import REQUEST_CODEC
from tests.producer_api.conftest import FakePublisher
from tests.support.images import make_image_bytes
from tests.support.kafka import caption_request
from tests.support.tracing import by_name, recorded_spans

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
REQUESTS = TopicSettings().requests
REPLIES = TopicSettings().replies


@dataclass
class RecordingProducer:
    """The worker's producer: keeps each record; deliver() acknowledges them as the broker would."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    def produce(self, topic: str, **record: Any) -> None:
        self.sent.append({"topic": topic, **record})

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def deliver(self) -> None:
        for record in self.sent:
            if callback := record.pop("on_delivery", None):
                callback(None, None)


class StandInModel:
    name = "stand-in"

    def caption(self, pixels: list[torch.Tensor], **_limits: Any) -> list[str]:
        return ["a caption"] * len(pixels)


@dataclass
class WorkerPath:
    feeder: JobFeeder
    ready: queue.Queue[Job]
    worker: InferenceWorker
    outcomes: OutcomePublisher
    producer: RecordingProducer

    def run(self, message: Message) -> None:
        """What the worker's threads do with one record: take it, decode it, caption it, reply."""
        self.feeder._take(message)
        job = self.ready.get_nowait()
        self.worker._run_batch(StandInModel(), [job], self.outcomes)  # type: ignore[arg-type]
        self.producer.deliver()


def decode_or_refuse(data: bytes) -> torch.Tensor:
    if not data.startswith(b"\x89PNG"):
        raise InvalidImageError("not an image")
    return torch.zeros(3, 2, 2)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


@pytest.fixture
async def api() -> AsyncIterator[tuple[TestClient[Any, Any], FakePublisher]]:
    settings = ApiSettings(instance_id="test")
    app = make_api_app(api=settings, images=ImageSettings())
    pending = PendingReplies()
    publisher = FakePublisher(pending)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-encode") as encoding:
        app[SERVICE] = CaptionService(
            api=settings,
            topics=TopicSettings(),
            publisher=publisher,  # type: ignore[arg-type]
            pending=pending,
            reply_partition=0,
            executor=encoding,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        yield client, publisher
        await client.close()


@pytest.fixture
def worker_path() -> Iterator[WorkerPath]:
    producer, tracker, ready = RecordingProducer(), OffsetTracker(), queue.Queue[Job]()
    topics = TopicSettings()
    outcomes = OutcomePublisher(
        sink=DirectSink(producer),  # type: ignore[arg-type]
        tracker=tracker,
        topics=topics,
        model_name="stand-in",
        worker_id="w-1",
        group_id="g",
    )
    with ThreadPoolExecutor(1) as pool:
        feeder = JobFeeder(
            consumer=None,  # type: ignore[arg-type]
            commits=AutoCommits(
                tracker=tracker,
                producer=producer,  # type: ignore[arg-type]
                waits=KafkaWaits(timeout_s=1.0, reachable=lambda: True),
            ),
            topics=[REQUESTS],
            retry_topics=set(),
            tracker=tracker,
            outcomes=outcomes,
            ready=ready,
            backlog=lambda: 8,
            decode_pool=pool,
            preprocess=decode_or_refuse,
            fetch_size=8,
            waits=KafkaWaits(timeout_s=1.0, reachable=lambda: True),
            rules=RequestRules(own_topics=frozenset([REQUESTS])),
            reply_partitions=lambda _topic: 12,
            max_hold_s=1.0,
            on_fatal=lambda _reason: None,
        )
        worker = InferenceWorker(
            settings=WorkerSettings(worker_id="w-1"),
            kafka=KafkaSettings(),
            topics=topics,
            images=ImageSettings(),
        )
        yield WorkerPath(feeder, ready, worker, outcomes, producer)
        feeder.stopping.set()


def as_message(value: bytes, headers: list[tuple[str, bytes]], *, key: bytes = b"k") -> Message:
    return Message(
        topic=REQUESTS, partition=0, offset=5, key=key, value=value, headers=headers, timestamp=(1, 0)
    )


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format_trace_id(span.context.trace_id), format_span_id(span.context.span_id)


def parent_id(span: ReadableSpan) -> str | None:
    return format_span_id(span.parent.span_id) if span.parent is not None else None


async def test_one_request_gives_one_trace_from_api_through_kafka_to_the_reply(
    spans: InMemorySpanExporter,
    api: tuple[TestClient[Any, Any], FakePublisher],
    worker_path: WorkerPath,
) -> None:
    client, publisher = api
    image = base64.b64encode(make_image_bytes("PNG", seed=1)).decode()

    async with client.post(
        "/api/v1/predictions",
        json={"image": image},
        headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"},
    ) as response:
        assert response.status == 200, await response.text()
    (record_headers,) = publisher.headers
    worker_path.run(as_message(REQUEST_CODEC.encode(publisher.published[0]), record_headers))

    named = by_name(spans.get_finished_spans())
    assert set(named) == {
        "POST /api/v1/predictions",
        f"{REQUESTS} publish",
        f"{REQUESTS} process",
        "decode",
        "inference",
        f"{REPLIES} publish",
    }
    server, publish = named["POST /api/v1/predictions"], named[f"{REQUESTS} publish"]
    process, reply = named[f"{REQUESTS} process"], named[f"{REPLIES} publish"]
    assert {hex_ids(span)[0] for span in named.values()} == {CALLER_TRACE_ID}  # the caller's trace, continued
    assert parent_id(server) == CALLER_SPAN_ID and server.kind is SpanKind.SERVER
    assert parent_id(publish) == hex_ids(server)[1] and publish.kind is SpanKind.PRODUCER
    # The Kafka hop: the record's traceparent names the publish span, and the worker continues it.
    assert dict(record_headers)["traceparent"] == f"00-{CALLER_TRACE_ID}-{hex_ids(publish)[1]}-01".encode()
    assert parent_id(process) == hex_ids(publish)[1] and process.kind is SpanKind.CONSUMER
    for child in ("decode", "inference", f"{REPLIES} publish"):
        assert parent_id(named[child]) == hex_ids(process)[1], child
    assert named["inference"].attributes == {"captioner.batch.size": 1}
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    correlation_id = publisher.published[0].correlation_id
    assert process.attributes is not None
    assert process.attributes["messaging.message.conversation_id"] == correlation_id
    # The reply names the worker's reply span, in the same trace.
    (reply_record,) = worker_path.producer.sent
    assert (
        dict(reply_record["headers"])["traceparent"].decode()
        == f"00-{CALLER_TRACE_ID}-{hex_ids(reply)[1]}-01"
    )


async def test_a_request_without_traceparent_starts_the_trace_at_the_api(
    spans: InMemorySpanExporter, api: tuple[TestClient[Any, Any], FakePublisher]
) -> None:
    client, publisher = api
    image = base64.b64encode(make_image_bytes("PNG", seed=2)).decode()

    async with client.post("/api/v1/predictions", json={"image": image}) as response:
        assert response.status == 200

    named = by_name(spans.get_finished_spans())
    server = named["POST /api/v1/predictions"]
    assert server.parent is None
    (record_headers,) = publisher.headers
    carried = extract_context(record_headers)
    assert carried  # a valid context, of the API's own new trace
    assert dict(record_headers)["traceparent"].decode().split("-")[1] == hex_ids(server)[0]


@dataclass
class AskedSampler(Sampler):
    """The SDK's default sampler (parent-based, else always on), noting what each span asks it."""

    asked: list[tuple[str, SpanKind | None, Attributes]] = field(default_factory=list)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        self.asked.append((name, kind, attributes))
        return ParentBased(ALWAYS_ON).should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return "asked"


class NotedSpanIds(RandomIdGenerator):
    def __init__(self) -> None:
        self.span_ids: list[int] = []

    def generate_span_id(self) -> int:
        self.span_ids.append(super().generate_span_id())
        return self.span_ids[-1]


async def test_spans_exported_nowhere_cost_a_request_one_span_which_its_record_names(
    api: tuple[TestClient[Any, Any], FakePublisher],
) -> None:
    client, publisher = api
    sampler, ids = AskedSampler(), NotedSpanIds()
    previous = use_tracer_provider(UnrecordedTracer(TracerProvider(sampler=sampler, id_generator=ids)))
    try:
        async with client.post(
            "/api/v1/predictions",
            json={"image": base64.b64encode(make_image_bytes("PNG", seed=3)).decode()},
            headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"},
        ) as response:
            assert response.status == 200, await response.text()
    finally:
        use_tracer_provider(previous)

    # The server span alone, asked of the sampler without the attributes nobody would record.
    assert sampler.asked == [("POST /api/v1/predictions", SpanKind.SERVER, None)]
    (server_span_id,) = ids.span_ids
    (record_headers,) = publisher.headers
    traceparent = f"00-{CALLER_TRACE_ID}-{format_span_id(server_span_id)}-01"
    assert dict(record_headers)["traceparent"] == traceparent.encode()


def test_a_failed_job_keeps_its_trace_into_the_dead_letter_and_logs_its_ids(
    spans: InMemorySpanExporter, worker_path: WorkerPath
) -> None:
    traceparent = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01".encode()
    request = caption_request(b"IMAGEBYTES" * 1000, reply_topic=REPLIES, correlation_id="c-dead")
    stream = io.StringIO()
    handler = log_handler("json", stream)
    logging.getLogger("inference_consumer").addHandler(handler)
    try:
        worker_path.run(as_message(REQUEST_CODEC.encode(request), [("traceparent", traceparent)]))
    finally:
        logging.getLogger("inference_consumer").removeHandler(handler)

    (dead_letter,) = [r for r in worker_path.producer.sent if r["topic"] == TopicSettings().dead_letter]
    assert dict(dead_letter["headers"])["traceparent"] == traceparent  # carried unchanged
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    about_job = [line for line in lines if "dead-letter" in line["message"]]
    assert about_job, lines
    assert all(
        line["correlation_id"] == "c-dead" and line["trace_id"] == CALLER_TRACE_ID for line in about_job
    )
    assert "IMAGEBYTES" not in stream.getvalue()
    process = by_name(spans.get_finished_spans())[f"{REQUESTS} process"]
    assert process.status.status_code is StatusCode.ERROR


HOSTILE = "c-1\nforged line\r\x1b[2J\u2028\u202e"
UNSAFE = "\n\r\x1b\u2028\u202e"


async def test_a_hostile_path_reaches_the_servers_span_escaped_and_cut(
    spans: InMemorySpanExporter, api: tuple[TestClient[Any, Any], FakePublisher]
) -> None:
    client, _publisher = api
    # Percent-encoded in the request line, decoded in the path aiohttp gives the handler.
    path = "/api/v1/predictions%0Aforged%0D%1B%5B2J%E2%80%A8" + "x" * 4000

    async with client.get(path) as response:
        assert response.status == 404

    (server,) = spans.get_finished_spans()
    assert server.attributes is not None
    for text in (server.name, server.attributes["url.path"], server.attributes["http.route"]):
        assert isinstance(text, str) and not any(char in text for char in UNSAFE), text
        assert "\\nforged\\r\\x1b[2J\\u2028" in text
        assert len(text) < MAX_SPAN_TEXT_CHARS + 40


def test_a_hostile_correlation_id_reaches_span_and_log_escaped(
    spans: InMemorySpanExporter, worker_path: WorkerPath
) -> None:
    request = caption_request(make_image_bytes("PNG"), reply_topic=REPLIES, correlation_id=HOSTILE)
    stream = io.StringIO()
    handler = log_handler("text", stream)
    logging.getLogger("inference_consumer").addHandler(handler)
    try:
        worker_path.feeder._take(as_message(REQUEST_CODEC.encode(request), []))  # refused: dead-lettered
        worker_path.producer.deliver()
    finally:
        logging.getLogger("inference_consumer").removeHandler(handler)

    process = by_name(spans.get_finished_spans())[f"{REQUESTS} process"]
    assert process.attributes is not None
    assert process.attributes["messaging.message.conversation_id"] == span_text(HOSTILE)
    assert "\\nforged line\\r\\x1b" in span_text(HOSTILE)
    logged = stream.getvalue()
    assert "job c-1\\nforged line\\r\\x1b[2J\\u2028\\u202e at" in logged
    assert not any(char in logged.replace("\n", "") for char in UNSAFE)
    assert all(" forged line" not in line[:40] for line in logged.splitlines())
