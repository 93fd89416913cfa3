"""Spans recorded in memory by the OpenTelemetry SDK's own exporter, for the code under test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.tracing import new_tracer_provider, use_tracer_provider


@contextlib.contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Every span ended inside goes to the exporter this yields."""
    exporter = InMemorySpanExporter()
    provider = new_tracer_provider()  # with the span limits the services' providers have
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        use_tracer_provider(previous)
        provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]  # each name once
    return named
