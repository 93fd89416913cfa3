"""The replay's spans: one producer span `<target> publish` per re-published dead letter.

It is a child of the context in the dead letter's own `traceparent`, which retry and dead-letter records
carry unchanged from the request (so the replay joins the trace of the request that started the job; a
new trace when the header is absent or malformed, since headers are hostile input). The replayed record
carries this span's context in place of the dead letter's, so the worker's next `process` span hangs
under the replay. The span ends when Kafka acknowledges the record, or refuses it.
"""

from __future__ import annotations

from opentelemetry.trace import Span, SpanKind, StatusCode, set_span_in_context

from captioner.dlq.records import DeadLetter
from core.tracing import context_headers, extract_context, span_text, tracer
from schemas import headers as names

_TRACER = "captioner.dlq"
TRACE_HEADERS = frozenset({names.TRACEPARENT, names.TRACESTATE})


def start_replay_span(record: DeadLetter, target: str) -> tuple[Span, list[tuple[str, bytes]]]:
    """The span, and the headers of the replayed record: the dead letter's replay headers without its
    trace context, plus this span's."""
    span = tracer(_TRACER).start_span(
        span_text(f"{target} publish"),  # a topic a dead letter's headers may name
        context=extract_context(record.headers),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "publish",
            "messaging.destination.name": span_text(target),
            "captioner.replayed_from": record.position,
        },
    )
    kept = [(name, value) for name, value in record.replay_headers() if name not in TRACE_HEADERS]
    return span, kept + context_headers(set_span_in_context(span))


def end_replay_span(span: Span, error: str | None) -> None:
    if error is not None:
        span.set_status(StatusCode.ERROR, span_text(error))  # the Kafka client's text
    span.end()
