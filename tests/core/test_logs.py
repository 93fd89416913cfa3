"""Log lines: JSON when asked, each line about a job with its ids, never an image or a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from core.logs import MAX_MESSAGE_CHARS, log_context, log_handler
from core.settings import KafkaSettings, LogSettings
from inference_consumer.jobs import Job
from schemas import REQUEST_CODEC
from tests.support.kafka import caption_request

IMAGE_MARKER = b"IMAGEBYTES"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def log_stream() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = log_handler("json", stream)
    logger = logging.getLogger("tests.core.test_logs")
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
