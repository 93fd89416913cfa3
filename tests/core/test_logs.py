"""Log lines: JSON when asked, each line about a job with its ids, never an image or a secret."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from core.logs import (
    MAX_FIELD_CHARS,
    MAX_MESSAGE_CHARS,
    TRACEBACK_PREFIX,
    log_context,
    log_handler,
)
from core.settings import KafkaSettings, LogSettings
from core.text import escaped
from inference_consumer.jobs import Job
from schemas import REQUEST_CODEC
from tests.support.kafka import caption_request

IMAGE_MARKER = b"IMAGEBYTES"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def unregistered_logger(name: str) -> logging.Logger:
    """A logger outside logging's registry, so pytest's log capture never attaches to it: it would carry
    the hostile text (a lone surrogate) to the pytest-xdist controller, which cannot encode it."""
    return logging.Logger(name)


@pytest.fixture
def log_stream() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = log_handler("json", stream)
    logger = unregistered_logger("tests.core.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_jobs_correlation_and_trace_ids(
    log_stream: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_stream
    correlation_id: list[str | None] = [None]  # a worker knows it once the record is decoded

    logger.info("before any job")
    with log_context(correlation_id=lambda: correlation_id[0], trace_id="4bf92f3577b34da6a3ce929d0e0e4736"):
        logger.info("taken")
        correlation_id[0] = "c-42"
        with log_context(correlation_id="c-inner"):
            logger.warning("inner %s", "job")
        logger.error("failed")
    logger.info("after")

    before, taken, inner, failed, after = lines(stream)
    assert "correlation_id" not in before and "trace_id" not in before
    assert taken["message"] == "taken" and "correlation_id" not in taken
    assert taken["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert inner == inner | {"message": "inner job", "correlation_id": "c-inner", "level": "WARNING"}
    assert failed["correlation_id"] == "c-42" and failed["trace_id"] == taken["trace_id"]
    assert {"asctime", "logger", "threadName"} <= set(failed)
    assert "correlation_id" not in after and "trace_id" not in after


def test_a_job_logged_whole_shows_no_image_bytes(log_stream: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log_stream
    request = caption_request(IMAGE_MARKER * 100_000, reply_topic="results", correlation_id="c-1")
    value = REQUEST_CODEC.encode(request)
    job = Job("captioner.requests", 0, 7, b"c-1", value, {}, 1, request=request)

    logger.info("job %s", job)
    logger.info("request %r", request)
    logger.info("everything %s", [job, request, value[:0]])

    text = stream.getvalue()
    assert "IMAGEBYTES" not in text and "IMAGE" not in text
    assert "c-1" in text
    assert all(len(line["message"]) < MAX_MESSAGE_CHARS + 100 for line in lines(stream))


def test_a_huge_message_is_cut(log_stream: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log_stream

    logger.info("%s", b"x" * 1_000_000)

    (line,) = lines(stream)
    assert len(line["message"]) < MAX_MESSAGE_CHARS + 100
    assert line["message"].endswith("characters cut]")


def test_secrets_are_not_logged(log_stream: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log_stream
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_username="svc",
        sasl_password=SecretStr("hunter2-sasl"),
        ssl_key_password=SecretStr("hunter3-key"),
    )

    logger.info("kafka settings: %r", kafka)
    logger.info("kafka settings: %s", kafka)
    logger.info("dumped: %s", kafka.model_dump())

    text = stream.getvalue()
    assert "hunter2" not in text and "hunter3" not in text
    assert "svc" in text


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        handler = log_handler("auto", stream)
        with log_context(correlation_id="c-9"):
            handler.handle(record)

    assert terminal.getvalue().rstrip().endswith("hello [correlation_id=c-9]")
    assert json.loads(pipe.getvalue())["correlation_id"] == "c-9"
    assert LogSettings().format == "auto"
    assert LogSettings(format="json").format == "json"


HOSTILE = (
    "c-1\n2030-01-01 00:00:00,000 INFO forged [MainThread] all is well\r\x1b[2J\u2028\u2029\x85\u202e\udcff"
)


def text_lines(logger: logging.Logger, log: Callable[[logging.Logger], None]) -> list[str]:
    stream = io.StringIO()
    handler = log_handler("text", stream)
    logger.addHandler(handler)
    try:
        log(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


@pytest.fixture
def quiet_logger() -> Iterator[logging.Logger]:
    logger = unregistered_logger("tests.core.test_logs.quiet")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


def assert_escaped(line: str) -> None:
    assert "forged" in line  # shown, not dropped
    for escape in ("\\n", "\\r", "\\x1b", "\\u2028", "\\u2029", "\\x85", "\\u202e", "\\xff"):
        assert escape in line, escape
    assert not any(char in line for char in "\n\r\x1b\u2028\u2029\x85\u202e\udcff")


def test_a_hostile_correlation_id_and_message_stay_one_text_line(quiet_logger: logging.Logger) -> None:
    def log(logger: logging.Logger) -> None:
        with log_context(correlation_id=HOSTILE, trace_id=HOSTILE):
            logger.warning("file %s refused", HOSTILE)

    # splitlines() splits on \r, \x1c-\x1e, \x85, \u2028 and \u2029 too, as a log viewer may
    (line,) = text_lines(quiet_logger, log)

    assert_escaped(line.split(" [correlation_id=")[0])
    assert_escaped(line.split(" [correlation_id=")[1])
    assert line.encode("utf-8")  # no lone surrogate left to fail the stream's encoding


def test_a_hostile_correlation_id_and_message_stay_one_json_line(
    log_stream: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_stream

    with log_context(correlation_id=HOSTILE):
        logger.warning("file %s refused", HOSTILE)

    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert_escaped(record["message"])
    assert_escaped(record["correlation_id"])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_huge_context_value_gives_a_bounded_line(quiet_logger: logging.Logger, log_format: str) -> None:
    stream = io.StringIO()
    quiet_logger.addHandler(log_handler(log_format, stream))  # type: ignore[arg-type]

    with log_context(correlation_id="\n" * 1_000_000, trace_id="t" * 1_000_000):
        quiet_logger.info("%s", "m\x1b" * 1_000_000)

    (line,) = stream.getvalue().splitlines()
    bound = MAX_MESSAGE_CHARS + 4 * MAX_FIELD_CHARS
    # JSON writes each backslash of an escape twice
    assert len(line) < (bound if log_format == "text" else 2 * bound), len(line)
    assert line.count("characters cut]") == 3
    if log_format == "json":
        assert json.loads(line)["trace_id"].startswith("ttt")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_traceback_cannot_forge_a_record(quiet_logger: logging.Logger, log_format: str) -> None:
    stream = io.StringIO()
    quiet_logger.addHandler(log_handler(log_format, stream))  # type: ignore[arg-type]

    try:
        raise ValueError(f"bad value {HOSTILE}")
    except ValueError:
        quiet_logger.exception("could not read %s", "x")

    lines = stream.getvalue().split("\n")[:-1]
    if log_format == "json":
        (line,) = lines
        assert "\\x1b" in json.loads(line)["exc_info"]
    else:
        record, *traceback = lines
        assert record.endswith("could not read x")
        assert traceback and all(line.startswith(TRACEBACK_PREFIX) for line in traceback)
        assert any("forged" in line for line in traceback)
    assert "\x1b" not in stream.getvalue() and "\u2028" not in stream.getvalue()


@pytest.mark.parametrize(
    ("text", "limit", "shown"),
    [
        ("plain", 10, "plain"),
        ("a\nb", 10, "a\\nb"),
        ("abcdef", 3, "abc... [3 characters cut]"),
        ("ab\x1bcd", 4, "ab... [3 characters cut]"),  # an escape is never split
        ("\u2028", 6, "\\u2028"),
    ],
)
def test_printable_escapes_and_cuts(text: str, limit: int, shown: str) -> None:
    assert escaped(text, limit) == shown


def test_a_model_loads_without_libraries_warning_each_other_about_deprecations() -> None:
    """torch warns (on its own handler) when torchao, which transformers imports, registers an enum the old
    way: nothing an operator can act on, so a configured process does not show it."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import core.logs; core.logs.configure_logging('INFO'); import torchao"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert loaded.returncode == 0, loaded.stderr
    assert "deprecated" not in loaded.stderr, loaded.stderr
