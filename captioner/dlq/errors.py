"""What can end a `captioner dlq` command early, and the exit code each one means to a script."""

from __future__ import annotations

from enum import IntEnum

from schemas.errors import CaptionerError


class ExitCode(IntEnum):
    OK = 0
    REPLAY_FAILED = 1  # some records were not re-published (or their progress was not recorded)
    USAGE = 2  # bad options; typer/click use 2 for their own usage errors too
    KAFKA_UNAVAILABLE = 3  # broker unreachable, or a topic is missing
    NOT_FOUND = 4  # `show`: no record at that position or with that id
    INTERRUPTED = 130  # Ctrl-C / SIGTERM: stopped cleanly after committing acknowledged records


class DlqError(CaptionerError):
    """The operator tool's branch of the one error family; each member also names its exit status."""

    code = "usage_error"
    exit_code = ExitCode.USAGE


class UsageError(DlqError):
    exit_code = ExitCode.USAGE


class KafkaUnavailableError(DlqError):
    code = "kafka_unavailable"
    retriable = True
    exit_code = ExitCode.KAFKA_UNAVAILABLE


class TopicMissingError(KafkaUnavailableError):
    code = "topic_missing"
    retriable = False

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


class RecordNotFoundError(DlqError):
    code = "record_not_found"
    exit_code = ExitCode.NOT_FOUND
