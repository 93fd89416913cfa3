"""Logging set-up shared by every entry point; level and format come from settings, read by the caller.

Every line logged while a job is handled carries its correlation id and trace id: the code handling a
job wraps it in `log_context(...)`, and a filter on the handler copies both onto each record. Text
lines end with them in brackets; JSON lines have them as fields. A message is cut to
MAX_MESSAGE_CHARS, so nothing logged by accident (an image, a whole record) floods the log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

MAX_MESSAGE_CHARS = 4096
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
JSON_FIELDS = "{asctime}{levelname}{name}{threadName}{message}"

# A value, or a function that gives it when a line is logged (a worker learns a job's correlation id
# only once its record is decoded).
LogValue = str | Callable[[], str | None] | None

_correlation_id: ContextVar[LogValue] = ContextVar("correlation_id", default=None)
_trace_id: ContextVar[LogValue] = ContextVar("trace_id", default=None)


@contextlib.contextmanager
def log_context(*, correlation_id: LogValue = None, trace_id: LogValue = None) -> Iterator[None]:
    """Lines logged inside carry these ids; one left None keeps what an outer context set."""
    tokens = [
        (var, var.set(value))
        for var, value in ((_correlation_id, correlation_id), (_trace_id, trace_id))
        if value is not None
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _resolve(var: ContextVar[LogValue]) -> str | None:
    value = var.get()
    return value() if callable(value) else value


class JobContextFilter(logging.Filter):
    """Sets `correlation_id` and `trace_id` on every record (None outside a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = _resolve(_correlation_id)
        if getattr(record, "trace_id", None) is None:
            record.trace_id = _resolve(_trace_id)
        return True


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... [{len(message) - MAX_MESSAGE_CHARS} characters cut]"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _bounded(record.message)
        line = super().formatMessage(record)
        ids = [
            f"{name}={value}"
            for name in ("correlation_id", "trace_id")
            if (value := getattr(record, name, None)) is not None
        ]
        return f"{line} [{' '.join(ids)}]" if ids else line


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: time, level, logger, thread, message, the job's ids, extras."""

    def __init__(self) -> None:
        super().__init__(JSON_FIELDS, style="{", rename_fields={"levelname": "level", "name": "logger"})

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        if isinstance(log_data.get("message"), str):
            log_data["message"] = _bounded(log_data["message"])
        for name in ("correlation_id", "trace_id"):
            if log_data.get(name) is None:
                log_data.pop(name, None)
        return log_data


def log_handler(log_format: Literal["text", "json", "auto"], stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with the job-context filter; `auto` writes text to a
    terminal and JSON lines anywhere else (a file, a pipe, a log collector)."""
    stream = stream if stream is not None else sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(level: str, log_format: Literal["text", "json", "auto"] = "text") -> None:
    logging.basicConfig(level=level.upper(), handlers=[log_handler(log_format)])


# The operator tools' Kafka clients log here (their `logger` config), so one switch quiets them all.
LIBRDKAFKA_LOG = logging.getLogger("captioner.librdkafka")


def configure_tool_logging(*, verbose: bool) -> None:
    """An operator command's logging: warnings only, and none of the Kafka client's connection retries
    (a failure ends with one line and an exit code), unless -v asks for the details."""
    configure_logging("INFO" if verbose else "WARNING")
    LIBRDKAFKA_LOG.setLevel(logging.INFO if verbose else logging.CRITICAL)
