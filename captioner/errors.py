"""The operator tools' errors (`captioner caption`, `captioner dlq`): their branch of the one error family,
each member naming the exit status a script sees."""

from __future__ import annotations

from enum import IntEnum

from schemas.errors import CaptionerError


class ExitCode(IntEnum):
    OK = 0
    FAILURES = 1  # some images were not captioned, or some dead letters not re-published (or recorded)
    USAGE = 2  # bad options or settings; typer/click use 2 for their own usage errors too
    UNAVAILABLE = 3  # Kafka unreachable, or a topic is missing
    NOT_FOUND = 4  # `dlq show`: no record at that position or with that id
    INTERRUPTED = 130  # Ctrl-C / SIGTERM: stopped cleanly after committing acknowledged records


class OperatorError(CaptionerError):
    """What ends an operator command early, with `exit_code` and a one-line message."""

    code = "usage_error"
    exit_code = ExitCode.USAGE


class UsageError(OperatorError):
    """A command line (or setting) that cannot run; its message is for the user."""


class KafkaUnavailableError(OperatorError):
    code = "kafka_unavailable"
    retriable = True
    exit_code = ExitCode.UNAVAILABLE
