"""W3C trace context in and out of Kafka headers, and what hostile header values do (nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace import (
    NonRecordingSpan,
    format_span_id,
    format_trace_id,
    get_current_span,
    set_span_in_context,
)

from core.logs import MAX_MESSAGE_CHARS
from core.settings import TracingSettings
from core.tracing import (
    MAX_ATTRIBUTE_CHARS,
    MAX_SPAN_TEXT_CHARS,
    JsonLinesSpanExporter,
    UnrecordedTracer,
    configure_tracing,
    context_headers,
    extract_context,
    record_failure,
    span_exporter,
    span_text,
    trace_id,
    tracer,
    use_tracer_provider,
)
from tests.support.tracing import recorded_spans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def remote_ids(context: Context) -> tuple[str, str] | None:
    span_context = get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return None
    return format_trace_id(span_context.trace_id), format_span_id(span_context.span_id)


def test_a_span_context_survives_kafka_headers_both_ways() -> None:
    with recorded_spans():
        span = tracer("test").start_span("publish")
        headers = context_headers(set_span_in_context(span))
        span.end()

    assert [name for name, _ in headers] == ["traceparent"]
    assert all(isinstance(value, bytes) for _, value in headers)
    extracted = extract_context(headers)
    assert remote_ids(extracted) == (trace_id(span), format_span_id(span.get_span_context().span_id))


def test_tracestate_travels_with_traceparent() -> None:
    context = extract_context([("traceparent", TRACEPARENT.encode()), ("tracestate", b"vendor=abc")])

    assert remote_ids(context) == (TRACE_ID, SPAN_ID)
    assert dict(context_headers(context)) == {
        "traceparent": TRACEPARENT.encode(),
        "tracestate": b"vendor=abc",
    }


def test_http_headers_are_read_too() -> None:
    assert remote_ids(extract_context([("Traceparent", TRACEPARENT)])) == (TRACE_ID, SPAN_ID)


HOSTILE = [
    pytest.param([("traceparent", b"garbage")], id="garbage"),
    pytest.param([("traceparent", b"")], id="empty"),
    pytest.param([("traceparent", f"01-{TRACE_ID}-{SPAN_ID}-01-".encode() + b"a" * 10_000_000)], id="huge"),
    pytest.param([("traceparent", b"00-\xff\xfe" + TRACEPARENT.encode()[5:])], id="not-utf8"),
    pytest.param([("traceparent", "00-" + "é" * 32 + f"-{SPAN_ID}-01")], id="not-ascii"),
    pytest.param([("traceparent", f"ff-{TRACE_ID}-{SPAN_ID}-01".encode())], id="version-ff"),
    pytest.param([("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01-extra".encode())], id="v00-extra-field"),
    pytest.param([("traceparent", f"00-{'0' * 32}-{SPAN_ID}-01".encode())], id="zero-trace-id"),
    pytest.param([("traceparent", f"00-{TRACE_ID}-{'0' * 16}-01".encode())], id="zero-span-id"),
    pytest.param([("traceparent", f"00-{TRACE_ID.upper()}-{SPAN_ID}-01".encode())], id="upper-case"),
    pytest.param([("traceparent", TRACEPARENT.encode())] * 2, id="repeated"),
    pytest.param([("traceparent", None)], id="null-value"),
    pytest.param([(None, TRACEPARENT.encode())], id="null-name"),
    pytest.param([("traceparent", 12345)], id="not-text"),
]


@pytest.mark.parametrize("headers", HOSTILE)
def test_a_hostile_traceparent_is_ignored_and_the_work_starts_a_new_trace(
    headers: list[tuple[object, object]],
) -> None:
    context = extract_context(headers)

    assert remote_ids(context) is None
    with recorded_spans() as exporter:
        tracer("test").start_span("process", context=context).end()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert trace_id(span) not in (None, TRACE_ID)


def test_an_oversized_or_binary_tracestate_is_dropped_but_the_parent_kept() -> None:
    for state in (b"v=" + b"a" * 10_000, b"v=\xff"):
        context = extract_context([("traceparent", TRACEPARENT.encode()), ("tracestate", state)])

        assert remote_ids(context) == (TRACE_ID, SPAN_ID)
        assert "tracestate" not in dict(context_headers(context))


PARENTS = [
    pytest.param([], id="root"),
    pytest.param([("traceparent", TRACEPARENT.encode())], id="sampled-parent"),
    pytest.param([("traceparent", TRACEPARENT[:-2].encode() + b"00")], id="unsampled-parent"),
    pytest.param([("traceparent", TRACEPARENT[:-2].encode() + b"03")], id="random-trace-id-flag"),
    pytest.param([("traceparent", TRACEPARENT[:-2].encode() + b"fd")], id="unknown-flags"),
    pytest.param([("traceparent", TRACEPARENT.encode()), ("tracestate", b"vendor=abc")], id="tracestate"),
]


def traceparent_fields(headers: list[tuple[str, bytes]]) -> dict[str, object]:
    """What a span's record headers say, less its own span id: version, trace id, flags, trace state."""
    named = dict(headers)
    version, trace, _span, flags = named["traceparent"].decode().split("-")
    return {"version": version, "trace": trace, "flags": flags, "tracestate": named.get("tracestate")}


SAMPLERS = [
    pytest.param(None, id="default-sampler"),  # parentbased_always_on, unless OTEL_TRACES_SAMPLER says
    pytest.param(ParentBased(ALWAYS_OFF), id="parentbased-always-off"),
    pytest.param(ALWAYS_OFF, id="always-off"),
]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("parent", PARENTS)
def test_spans_exported_nowhere_record_nothing_and_carry_the_context_the_sdks_would(
    parent: list[tuple[object, object]], sampler: Sampler | None
) -> None:
    context = extract_context(parent)
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    previous = use_tracer_provider(provider)
    try:
        recorded = tracer("test").start_span("publish", context=context)
        expected = traceparent_fields(context_headers(set_span_in_context(recorded)))
        use_tracer_provider(UnrecordedTracer(provider))
        with tracer("test").start_as_current_span("publish", context=context) as span:
            assert get_current_span() is span
            headers = context_headers(set_span_in_context(span))
    finally:
        use_tracer_provider(previous)

    got = traceparent_fields(headers)
    assert not span.is_recording()
    assert recorded.is_recording() is bool(int(str(expected["flags"]), 16) & 1)  # the SDK: if sampled
    if parent:
        assert got == expected
        assert got["trace"] == TRACE_ID and format_span_id(span.get_span_context().span_id) != SPAN_ID
    else:  # a new trace each
        assert got["trace"] != expected["trace"]
        assert {**got, "trace": None} == {**expected, "trace": None}
    assert trace_id(span) == got["trace"]


def test_an_unrecorded_span_is_current_only_inside_its_block_even_when_the_block_raises() -> None:
    outside = get_current_span()
    unrecorded = UnrecordedTracer(TracerProvider())

    with (
        pytest.raises(ZeroDivisionError),
        unrecorded.start_as_current_span("outer") as outer,
        unrecorded.start_as_current_span("inner") as inner,
    ):
        assert get_current_span() is inner
        assert inner.get_span_context().trace_id == outer.get_span_context().trace_id  # its child
        1 / 0  # noqa: B018

    assert get_current_span() is outside


def test_tracing_exported_nowhere_is_configured_unrecorded() -> None:
    previous = use_tracer_provider(TracerProvider())
    try:
        assert configure_tracing(TracingSettings(tracing="off"), service_name="test") is None
        span = tracer("test").start_span("publish")
    finally:
        use_tracer_provider(previous)

    assert isinstance(span, NonRecordingSpan) and span.get_span_context().is_valid


def test_tracing_destinations() -> None:
    assert span_exporter("off") is None
    assert type(span_exporter("console")).__name__ == "ConsoleSpanExporter"
    assert type(span_exporter("otlp")).__name__ == "OTLPSpanExporter"
    assert isinstance(span_exporter("file:/tmp/x.jsonl"), JsonLinesSpanExporter)
    assert TracingSettings().tracing == "off"
    with pytest.raises(ValueError):
        TracingSettings(tracing="zipkin")


def test_the_file_exporter_writes_one_json_span_a_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    with recorded_spans() as exporter:
        tracer("test").start_span("a").end()
        tracer("test").start_span("b").end()
    JsonLinesSpanExporter(path).export(exporter.get_finished_spans())

    lines = path.read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["a", "b"]


HOSTILE = "c-1\nforged\r\x1b[2J\u2028\u202e"


def assert_safe(text: object, limit: int) -> None:
    assert isinstance(text, str)
    assert not any(char in text for char in "\n\r\x1b\u2028\u202e"), text
    assert len(text) <= limit + len("... [1000000 characters cut]"), len(text)


def test_outside_text_in_a_span_is_escaped_and_bounded() -> None:
    with recorded_spans() as exporter:
        span = tracer("test").start_span(span_text(HOSTILE))
        span.set_attribute("messaging.message.conversation_id", span_text(HOSTILE * 100_000))
        try:
            raise ValueError(HOSTILE * 100_000)
        except ValueError as error:
            record_failure(span, error)
        span.end()

    (finished,) = exporter.get_finished_spans()
    assert finished.name == "c-1\\nforged\\r\\x1b[2J\\u2028\\u202e"
    assert finished.attributes is not None
    assert_safe(finished.attributes["messaging.message.conversation_id"], MAX_SPAN_TEXT_CHARS)
    (event,) = finished.events
    assert event.attributes is not None
    assert_safe(event.attributes["exception.message"], MAX_MESSAGE_CHARS)
    stacktrace = event.attributes["exception.stacktrace"]
    assert isinstance(stacktrace, str) and "\x1b" not in stacktrace and "Traceback" in stacktrace
    assert finished.status.description == "ValueError"


def test_every_attribute_is_cut_by_the_span_limits() -> None:
    with recorded_spans() as exporter:
        span = tracer("test").start_span("s", attributes={"raw": "x" * 1_000_000})
        span.end()

    (finished,) = exporter.get_finished_spans()
    assert finished.attributes is not None
    assert len(str(finished.attributes["raw"])) == MAX_ATTRIBUTE_CHARS
