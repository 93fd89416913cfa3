"""Logging set-up shared by every entry point; level and format come from settings, read by the caller.

Every line logged while a job is handled carries its correlation id and trace id: the code handling a
job wraps it in `log_context(...)`, and a filter on the handler copies both onto each record. Text
lines end with them in brackets; JSON lines have them as fields.

A log line holds text from outside (a correlation id from a record, a topic name, a file name, a
library's error text), so the formatters, not the call sites, make every line safe: control characters
(C0, DEL, C1, Unicode line and paragraph separators, bidirectional overrides, lone surrogates) are
escaped visibly (`\\n`, `\\x1b`, `\\u2028`), and every part is cut to its bound (the message to
MAX_MESSAGE_CHARS, each id and other field to MAX_FIELD_CHARS), so one record is one line of bounded
length, in text and JSON alike. A traceback is the one part that spans lines: in text each of its lines
starts with TRACEBACK_PREFIX, so nothing in it can pass for a record of its own.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

from core.text import escaped, escaped_keeping_lines

MAX_MESSAGE_CHARS = 4096
# A correlation or trace id, a logger or thread name, an extra field of a JSON line.
MAX_FIELD_CHARS = 256
# The time, level, logger and thread before the message of a text line.
MAX_PREFIX_CHARS = 2 * MAX_FIELD_CHARS
MAX_TRACEBACK_CHARS = 16384
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
JSON_FIELDS = "{asctime}{levelname}{name}{threadName}{message}"
TRACEBACK_PREFIX = "  | "
_CONTEXT_FIELDS = ("correlation_id", "trace_id")
_TRACEBACK_FIELDS = frozenset({"exc_info", "stack_info"})


def traceback_text(text: str) -> str:
    """A traceback cut to MAX_TRACEBACK_CHARS, its line breaks kept and every other unsafe character
    escaped."""
    cut = len(text) - MAX_TRACEBACK_CHARS
    head = text[:MAX_TRACEBACK_CHARS] if cut > 0 else text
    shown = escaped_keeping_lines(head)
    return f"{shown}\n... [{cut} characters cut]" if cut > 0 else shown


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


class TextFormatter(logging.Formatter):
    """`<time> <level> <logger> [<thread>] <message> [correlation_id=... trace_id=...]`, one line; a
    traceback follows on lines that start with TRACEBACK_PREFIX."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        # Not Formatter.format: that caches the raw traceback on the record (exc_text), where another
        # handler's formatter may have put one already.
        record.message = escaped(record.getMessage(), MAX_MESSAGE_CHARS)
        record.asctime = self.formatTime(record, self.datefmt)
        head = escaped(self.formatMessage(record), MAX_PREFIX_CHARS + MAX_MESSAGE_CHARS)
        ids = [
            f"{name}={escaped(str(value), MAX_FIELD_CHARS)}"
            for name in _CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        ]
        lines = [f"{head} [{' '.join(ids)}]" if ids else head]
        if record.exc_info:
            lines.append(self._continued(self.formatException(record.exc_info)))
        elif record.exc_text:
            lines.append(self._continued(record.exc_text))
        if record.stack_info:
            lines.append(self._continued(self.formatStack(record.stack_info)))
        return "\n".join(lines)

    @staticmethod
    def _continued(traceback: str) -> str:
        return "\n".join(TRACEBACK_PREFIX + line for line in traceback_text(traceback).split("\n"))


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: time, level, logger, thread, message, the job's ids, extras. Every text
    field is escaped and cut like a text line's parts; a field that is not text, a number or a boolean is
    written as its (escaped, cut) text."""

    def __init__(self) -> None:
        # Not ASCII-only: every text field is escaped already, so other characters can stay readable.
        super().__init__(
            JSON_FIELDS,
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for name in _CONTEXT_FIELDS:
            if log_data.get(name) is None:
                log_data.pop(name, None)
        return {name: _json_field(name, value) for name, value in log_data.items()}


def _json_field(name: str, value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    if name in _TRACEBACK_FIELDS:
        return traceback_text(text)
    return escaped(text, MAX_MESSAGE_CHARS if name == "message" else MAX_FIELD_CHARS)


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


# Loggers whose warnings are notices between libraries, nothing an operator can act on: torch warns, in its
# own format on its own handler, each time torchao (which transformers imports to load any model) registers
# an enum the deprecated way. Their errors still show.
QUIETED_LOGGERS = ("torch.utils._pytree",)


def configure_logging(level: str, log_format: Literal["text", "json", "auto"] = "text") -> None:
    logging.basicConfig(level=level.upper(), handlers=[log_handler(log_format)])
    for name in QUIETED_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


# The operator tools' Kafka clients log here (their `logger` config), so one switch quiets them all.
LIBRDKAFKA_LOG = logging.getLogger("captioner.librdkafka")


def configure_tool_logging(*, verbose: bool) -> None:
    """An operator command's logging: warnings only, and none of the Kafka client's connection retries
    (a failure ends with one line and an exit code), unless -v asks for the details."""
    configure_logging("INFO" if verbose else "WARNING")
    LIBRDKAFKA_LOG.setLevel(logging.INFO if verbose else logging.CRITICAL)
