"""The operator tools' errors are one branch of the project's error family; the command line maps each to
its exit status (captioner/cli.py, EXIT_CODES)."""

from __future__ import annotations

import pytest

from captioner.bulk.options import Via, options_from
from captioner.bulk.sinks import Format
from captioner.cli import exit_code
from captioner.dlq.errors import RecordNotFoundError, TopicMissingError, UntrustedTargetError
from captioner.errors import ExitCode, KafkaRefusedError, KafkaUnavailableError, OperatorError, UsageError
from schemas.errors import CaptionerError

ERRORS_AND_EXIT_CODES = [
    (UsageError("bad"), ExitCode.USAGE),
    (KafkaUnavailableError("down"), ExitCode.UNAVAILABLE),
    (TopicMissingError("captioner.dlq"), ExitCode.UNAVAILABLE),
    (RecordNotFoundError("gone"), ExitCode.NOT_FOUND),
    (UntrustedTargetError("elsewhere"), ExitCode.USAGE),
    (KafkaRefusedError("refused"), ExitCode.FAILURES),
]


@pytest.mark.parametrize(("error", "status"), ERRORS_AND_EXIT_CODES)
def test_every_operator_error_is_a_captioner_error_the_command_line_gives_an_exit_status(
    error: OperatorError, status: ExitCode
) -> None:
    assert isinstance(error, CaptionerError)
    assert exit_code(error) is status


@pytest.mark.parametrize(("error", "status"), ERRORS_AND_EXIT_CODES)
def test_an_error_knows_no_exit_status_of_its_own(error: OperatorError, status: ExitCode) -> None:
    assert not hasattr(error, "exit_code")


def test_caption_and_dlq_share_one_usage_error() -> None:
    with pytest.raises(UsageError, match="--resume needs --output"):
        options_from(
            paths=["a.jpg"],
            via=Via.http,
            api_url="http://127.0.0.1:9000",
            output=None,
            format=Format.jsonl,
            resume=True,
            recursive=False,
            concurrency=None,
            timeout_s=1.0,
            attempts=1,
        )
