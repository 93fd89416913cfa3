"""The operator tools' errors (`captioner caption`, `captioner dlq`, `captioner topics`): their branch of the
one error family, and the exit statuses a script sees (which error ends with which: captioner/cli.py,
EXIT_CODES)."""

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
    """What ends an operator command early, with a one-line message."""

    code = "usage_error"


class UsageError(OperatorError):
    """A command line (or setting) that cannot run; its message is for the user."""


class KafkaUnavailableError(OperatorError):
    code = "kafka_unavailable"
    retriable = True


class KafkaRefusedError(OperatorError):
    """The cluster refused an ACL or a credential (the caller is not a super user, say)."""

    code = "kafka_refused"
