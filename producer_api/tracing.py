"""The API's spans: a server span per caption request (continuing the caller's W3C `traceparent`) and a
producer span per job published, whose context goes into the record's headers for the workers. While
spans are exported nowhere, the server span has no attributes and there is no producer span: the record
names the server span, and a request costs one id and one question to the sampler, not two."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from opentelemetry.context import get_current
from opentelemetry.trace import Span, SpanKind, StatusCode, set_span_in_context

from core.logs import log_context
from core.tracing import context_headers, extract_context, span_text, spans_recorded, trace_id, tracer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Only the caption routes are traced: health checks, metrics and static files would drown them.
TRACED_PREFIX = "/api/v1/predictions"
_TRACER = "captioner.api"


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost, so its span sees the status the error middleware answered with."""
    if not request.path.startswith(TRACED_PREFIX):
        return await handler(request)
    route = request.match_info.route.resource
    path = span_text(route.canonical if route is not None else request.path)
    method = span_text(request.method)
    attributes = (
        {"http.request.method": method, "http.route": path, "url.path": span_text(request.path)}
        if spans_recorded()
        else None
    )
    with tracer(_TRACER).start_as_current_span(
        f"{method} {path}",
        context=extract_context(request.headers.items()),
        kind=SpanKind.SERVER,
        attributes=attributes,
    ) as span:
        with log_context(trace_id=trace_id(span)):
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # a redirect or an error that got past the error middleware
                _answered(span, exc.status)
                raise
        _answered(span, response.status)
        return response


def _answered(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


@contextlib.contextmanager
def publish_span(topic: str, correlation_id: str) -> Iterator[list[tuple[str, bytes]]]:
    """A producer span around one job's publish (a child of the request's span); yields the record
    headers that carry its context to the worker. Unrecorded, the request's own span is named instead."""
    if not spans_recorded():
        yield context_headers(get_current())
        return
    with tracer(_TRACER).start_as_current_span(
        span_text(f"{topic} publish"),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "publish",
            "messaging.destination.name": span_text(topic),
            "messaging.message.conversation_id": span_text(correlation_id),
        },
    ) as span:
        yield context_headers(set_span_in_context(span))
