"""A job's spans and log context on the worker.

Each record taken gets a consumer span `<topic> process`, a child of the context in its `traceparent`
header (a new trace when there is none or it is malformed), from the moment it is taken until its
outcome is durable. Under it: `decode` (on the decode pool), `inference` and `<reply topic> publish`.
A batch's model call is one call for many jobs, each maybe of another trace, so every job of the batch
gets its own `inference` span over the same interval, with the batch's size as an attribute: each trace
then shows its job's whole path. Spans cross threads (feeder, decode pool, inference loop, delivery
reports) through the context kept on the job, never the thread's current context.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode, set_span_in_context

from core.logs import log_context
from core.tracing import context_headers, extract_context, record_failure, span_text, trace_id, tracer

if TYPE_CHECKING:
    from inference_consumer.jobs import Job

_TRACER = "captioner.worker"
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobTrace:
    span: Span  # the job's `process` span
    context: Context  # with that span current: the parent of the job's other spans
    trace_id: str | None


def start_job_trace(job: Job) -> JobTrace:
    span = tracer(_TRACER).start_span(
        span_text(f"{job.topic} process"),
        context=extract_context(job.headers.items()),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": span_text(job.topic),
            "messaging.destination.partition.id": str(job.partition),
            "messaging.kafka.offset": job.offset,
            "captioner.attempt": job.attempt,
        },
    )
    return JobTrace(span, set_span_in_context(span), trace_id(span))


def end_job_trace(job: Job) -> None:
    if job.trace is not None:
        if job.correlation_id is not None:
            job.trace.span.set_attribute("messaging.message.conversation_id", span_text(job.correlation_id))
        job.trace.span.end()


def job_failed(job: Job, error: BaseException) -> None:
    if job.trace is not None:
        record_failure(job.trace.span, error)


@contextlib.contextmanager
def job_log_context(job: Job) -> Iterator[None]:
    """Lines logged inside carry the job's correlation id (once its record is decoded) and trace id."""
    with log_context(correlation_id=lambda: job.correlation_id, trace_id=job.trace_id):
        yield


def about_job(method: Callable[Concatenate[T, Job, P], R]) -> Callable[Concatenate[T, Job, P], R]:
    """Runs a method whose first argument is a job inside that job's log context."""

    @functools.wraps(method)
    def in_job_context(self: T, job: Job, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with job_log_context(job):
            return method(self, job, *args, **kwargs)

    return in_job_context


def traced_decode(job: Job, decode: Callable[[bytes], R]) -> Callable[[bytes], R]:
    """`decode`, run (on the decode pool) inside a `decode` span of the job."""

    def decode_in_span(data: bytes) -> R:
        parent = job.trace.context if job.trace is not None else None
        with tracer(_TRACER).start_as_current_span(
            "decode", context=parent, attributes={"captioner.image.bytes": len(data)}
        ):
            return decode(data)

    return decode_in_span


@contextlib.contextmanager
def inference_spans(jobs: list[Job]) -> Iterator[None]:
    """One `inference` span per job of the batch, over the model call; failed, they record the error."""
    spans = [
        tracer(_TRACER).start_span(
            "inference",
            context=job.trace.context,
            attributes={"captioner.batch.size": len(jobs)},
        )
        for job in jobs
        if job.trace is not None
    ]
    try:
        yield
    except BaseException as error:
        for span in spans:
            record_failure(span, error)
        raise
    finally:
        for span in spans:
            span.end()


def start_publish_span(job: Job, topic: str) -> tuple[Span, list[tuple[str, bytes]]]:
    """A producer span for one of the job's outcome records, and the headers that name it."""
    parent = job.trace.context if job.trace is not None else None
    span = tracer(_TRACER).start_span(
        span_text(f"{topic} publish"),  # a reply topic a request named
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "publish",
            "messaging.destination.name": span_text(topic),
        },
    )
    return span, context_headers(set_span_in_context(span))


def end_publish_span(span: Span, error: str | None) -> None:
    if error is not None:
        span.set_status(StatusCode.ERROR, span_text(error))  # the Kafka client's text
    span.end()
