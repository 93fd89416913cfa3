"""Topic creation that the cluster does not finish in time ends in the error family's retriable
KafkaTimeoutError, which the commands route on, not a bare TimeoutError."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.errors import CaptionerError, KafkaTimeoutError
from core.topics import _wait_for_leaders


class LeaderlessAdmin:
    """A cluster that never elects a leader for the topic."""

    def list_topics(self, timeout: float) -> SimpleNamespace:
        leaderless = SimpleNamespace(error=None, partitions={0: SimpleNamespace(leader=-1)})
        return SimpleNamespace(topics={"captioner.requests": leaderless})


def test_topics_without_leaders_in_time_are_a_retriable_kafka_timeout() -> None:
    with pytest.raises(KafkaTimeoutError, match="without partition leaders") as raised:
        _wait_for_leaders(LeaderlessAdmin(), ["captioner.requests"], timeout_s=0)  # type: ignore[arg-type]

    assert isinstance(raised.value, CaptionerError) and raised.value.retriable
