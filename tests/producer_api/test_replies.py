from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import REGISTRY

from producer_api.replies import PendingReplies, listener_config
from schemas import CaptionReply, ReplyError, ReplyStatus


def make_reply(
    correlation_id: str, status: ReplyStatus = ReplyStatus.SUCCEEDED, title: str = "t"
) -> CaptionReply:
    error = ReplyError("inference_failed", "boom", True) if status is ReplyStatus.RETRYING else None
    return CaptionReply(
        correlation_id=correlation_id,
        status=status,
        model="m",
        worker_id="w",
        title=title,
        error=error,
        completed_at=datetime.now(UTC),
    )


async def test_first_final_reply_wins_and_duplicates_are_dropped() -> None:
    pending = PendingReplies()
    waiting = pending.expect("a")

    pending.deliver([make_reply("a", title="first"), make_reply("a", title="redelivered")])

    assert (await waiting).title == "first"


async def test_retrying_notice_keeps_the_caller_waiting() -> None:
    pending = PendingReplies()
    waiting = pending.expect("a")

    pending.deliver([make_reply("a", ReplyStatus.RETRYING)])
    assert not waiting.done()
    pending.deliver([make_reply("a", title="after retry")])

    assert (await waiting).title == "after retry"
    assert pending.forget("a") is not None  # the notice is still there to explain a timeout


def unclaimed() -> float:
    return REGISTRY.get_sample_value("captioner_api_replies_unclaimed_total") or 0.0


async def test_replies_for_other_instances_are_ignored_and_counted() -> None:
    pending = PendingReplies()
    waiting = pending.expect("mine")
    before = unclaimed()

    pending.deliver([make_reply("someone-elses"), make_reply("mine"), make_reply("mine", title="again")])

    assert (await waiting).title == "t"
    assert unclaimed() == before + 2  # another instance's reply, and the duplicate of ours


def test_the_reply_listener_never_skips_ahead_after_losing_its_position() -> None:
    config = listener_config({"group.id": "api", "auto.offset.reset": "latest", "enable.auto.commit": True})

    assert config["auto.offset.reset"] == "earliest"
    assert config["enable.auto.commit"] is False
