"""The operator tools' errors are one branch of the project's error family, each naming its exit code."""

from __future__ import annotations

import pytest

from captioner.bulk.options import Via, options_from
from captioner.bulk.sinks import Format
from captioner.dlq.errors import RecordNotFoundError, TopicMissingError, UntrustedTargetError
from captioner.errors import ExitCode, KafkaUnavailableError, OperatorError, UsageError
from schemas.errors import CaptionerError


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [
        (UsageError("bad"), ExitCode.USAGE),
        (KafkaUnavailableError("down"), ExitCode.UNAVAILABLE),
        (TopicMissingError("captioner.dlq"), ExitCode.UNAVAILABLE),
        (RecordNotFoundError("gone"), ExitCode.NOT_FOUND),
        (UntrustedTargetError("elsewhere"), ExitCode.USAGE),
    ],
)
def test_every_operator_error_is_a_captioner_error_with_an_exit_code(
    error: OperatorError, exit_code: ExitCode
) -> None:
    assert isinstance(error, CaptionerError)
    assert error.exit_code is exit_code


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
