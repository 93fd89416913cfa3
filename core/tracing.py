"""OpenTelemetry spans and W3C Trace Context in HTTP and Kafka headers.

Spans always exist in-process (so every job has a trace id, for logs and for the records it causes);
`CAPTIONER_TRACING` chooses where they are exported: nowhere (the default), OTLP (configured by the
SDK's own OTEL_EXPORTER_OTLP_* variables), the console, or a file of JSON lines. Spans exported nowhere
are not recorded either (`UnrecordedTracer`): they carry the same trace context, and cost a fraction;
callers skip what only a recorded span would keep (`spans_recorded`).

Trace context is as hostile as any other header: a value that is not ASCII, too long, repeated or
malformed is ignored, and the work it came with starts a new trace. Text from outside (a path, a topic
named by a record, a correlation id, an error's message) goes into a span only through `span_text` (or
`record_failure` for an error): escaped and cut as log lines are (core.logs). The provider's span limits
cut any attribute at MAX_ATTRIBUTE_CHARS besides.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path

from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    Tracer,
    format_trace_id,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from core.logs import MAX_MESSAGE_CHARS, traceback_text
from core.settings import TracingSettings
from core.text import escaped
from schemas.headers import TRACEPARENT, TRACESTATE

# A version-00 traceparent is 55 characters; later versions may append fields, so some room is left.
MAX_TRACEPARENT_CHARS = 256
# W3C: at most 32 list members; platforms should propagate at least 512 characters.
MAX_TRACESTATE_CHARS = 512
_LIMITS = {TRACEPARENT: MAX_TRACEPARENT_CHARS, TRACESTATE: MAX_TRACESTATE_CHARS}

# An outside value in an attribute (a path, a topic name, an id); an error's message may be longer.
MAX_SPAN_TEXT_CHARS = 256
# Any attribute, by the SDK's span limits: the last bound, for text that missed span_text.
MAX_ATTRIBUTE_CHARS = 16384

_PROPAGATOR = TraceContextTextMapPropagator()


def new_tracer_provider(resource: Resource | None = None) -> TracerProvider:
    """A provider whose spans cut every attribute value at MAX_ATTRIBUTE_CHARS."""
    limits = SpanLimits(max_attribute_length=MAX_ATTRIBUTE_CHARS)
    if resource is None:
        return TracerProvider(span_limits=limits)
    return TracerProvider(resource=resource, span_limits=limits)


class UnrecordedTracer(Tracer):
    """The tracer when spans are exported nowhere. Its spans carry the trace context the SDK's would, asked
    of the same sampler and id generator (a provider's: `OTEL_TRACES_SAMPLER` applies), so logs and the
    records a job causes look the same downstream; they record nothing (no attributes, events or status)
    and call no span processor."""

    def __init__(self, provider: TracerProvider) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        # As the SDK's Tracer.start_span decides a span's context, less the recording.
        parent = get_current_span(context).get_span_context()
        trace = parent.trace_id if parent.is_valid else self._ids.generate_trace_id()
        sampling = self._sampler.should_sample(context, trace, name, kind, attributes, links)
        sampled = sampling.decision is Decision.RECORD_AND_SAMPLE  # as Decision.is_sampled, which is untyped
        flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
        random_id = parent.trace_flags.random_trace_id if parent.is_valid else self._ids.is_trace_id_random()
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        own = SpanContext(trace, self._ids.generate_span_id(), False, TraceFlags(flags), sampling.trace_state)
        return NonRecordingSpan(own)

    def start_as_current_span(  # type: ignore[override]  # a context manager as the SDK's, of another class
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> CurrentSpan:
        return CurrentSpan(self.start_span(name, context, kind, attributes, links))


class CurrentSpan:
    """A span that records nothing as the current span inside: `use_span` less what only a recording span
    needs (recording the error, setting the status, ending it), so a class and not a generator."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Span:
        self._token = attach(set_span_in_context(self._span))
        return self._span

    def __exit__(self, *_exc: object) -> None:
        detach(self._token)


SpanSource = TracerProvider | UnrecordedTracer

# Until an entry point configures tracing: spans with ids, recorded nowhere.
_source: SpanSource = UnrecordedTracer(new_tracer_provider())

HeaderValue = str | bytes | None


_tracers: dict[str, Tracer] = {}  # of _source, by name: get_tracer builds a new one on every call


def tracer(name: str) -> Tracer:
    if isinstance(_source, UnrecordedTracer):
        return _source
    found = _tracers.get(name)
    if found is None:
        found = _tracers[name] = _source.get_tracer(name)
    return found


def spans_recorded() -> bool:
    """False while spans are exported nowhere: a caller may then skip what only a recorded span would keep
    (its attributes, or a child span that would add nothing downstream but its own span id)."""
    return not isinstance(_source, UnrecordedTracer)


def use_tracer_provider(source: SpanSource) -> SpanSource:
    """Makes `source` the one every span comes from (a provider, or an UnrecordedTracer for spans recorded
    nowhere); returns the previous one (tests swap them)."""
    global _source
    previous, _source = _source, source
    _tracers.clear()
    return previous


def configure_tracing(settings: TracingSettings, *, service_name: str) -> TracerProvider | None:
    """Called once by an entry point. OTEL_SERVICE_NAME, when set, names the service instead. Returns the
    provider spans now come from; None when they are exported nowhere (and so not recorded)."""
    exporter = span_exporter(settings.tracing)
    provider = new_tracer_provider(_resource(service_name))
    if exporter is None:
        use_tracer_provider(UnrecordedTracer(provider))
        return None
    # Batched on a thread of its own, so no span end waits on the exporter; flushed at exit.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_tracer_provider(provider)
    return provider


def span_exporter(destination: str) -> SpanExporter | None:
    if destination == "off":
        return None
    if destination == "console":
        return ConsoleSpanExporter()
    if destination == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return JsonLinesSpanExporter(Path(destination.removeprefix("file:")))


def _resource(service_name: str) -> Resource:
    detected = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, read by the SDK
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        return detected.merge(Resource({SERVICE_NAME: service_name}))
    return detected


class JsonLinesSpanExporter(SpanExporter):
    """One JSON object per span and line (the SDK's own span.to_json), appended to a file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        try:
            with self._lock, self._path.open("a", encoding="utf-8") as file:
                file.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


def span_text(value: object, limit: int = MAX_SPAN_TEXT_CHARS) -> str:
    """A value from outside as a span's name, attribute or status: control characters escaped, cut to
    `limit` characters (as core.logs does for log lines)."""
    return escaped(str(value), limit)


def record_failure(span: Span, error: BaseException) -> None:
    """The error as the span's `exception` event (its message and stack trace escaped and cut) and the
    span's status, ERROR with the error's class."""
    span.record_exception(
        error,
        attributes={
            "exception.message": span_text(error, MAX_MESSAGE_CHARS),
            "exception.stacktrace": traceback_text("".join(traceback.format_exception(error))),
        },
    )
    span.set_status(StatusCode.ERROR, type(error).__name__)


def extract_context(fields: Iterable[tuple[object, object]]) -> Context:
    """The trace context named by header (name, value) pairs, HTTP's or Kafka's; an empty context (a
    new trace) when `traceparent` is absent, repeated, not ASCII, too long or malformed."""
    found: dict[str, list[str | None]] = {}
    for name, value in fields:
        key = name.lower() if isinstance(name, str) else None
        if key in _LIMITS:
            found.setdefault(key, []).append(_bounded_text(value, _LIMITS[key]))
    parents = found.get(TRACEPARENT, [])
    if len(parents) != 1 or parents[0] is None:
        return Context()
    carrier = {TRACEPARENT: parents[0]}
    states = found.get(TRACESTATE, [])
    if len(states) == 1 and states[0] is not None:
        carrier[TRACESTATE] = states[0]
    return _PROPAGATOR.extract(carrier, context=Context())


def _bounded_text(value: object, limit: int) -> str | None:
    if isinstance(value, bytes):
        if len(value) > limit:
            return None
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and len(value) <= limit and value.isascii():
        return value
    return None


def context_headers(context: Context) -> list[tuple[str, bytes]]:
    """Kafka record headers naming `context` (its current span); none when it has no valid span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return [(name, value.encode("ascii")) for name, value in carrier.items()]


def trace_id(span: Span) -> str | None:
    """32 lower-case hex digits, as W3C and log search tools write it; None for an invalid span."""
    span_context = span.get_span_context()
    return format_trace_id(span_context.trace_id) if span_context.is_valid else None
