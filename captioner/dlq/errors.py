"""What can end a `captioner dlq` command early besides the operator tools' shared errors
(`captioner.errors`)."""

from __future__ import annotations

from captioner.errors import KafkaUnavailableError, OperatorError


class TopicMissingError(KafkaUnavailableError):
    code = "topic_missing"
    retriable = False

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


class RecordNotFoundError(OperatorError):
    code = "record_not_found"


class UntrustedTargetError(OperatorError):
    """A dead letter's original-topic header names a topic that is not the service's own: that record is
    not replayed (the others are)."""

    code = "untrusted_target"
