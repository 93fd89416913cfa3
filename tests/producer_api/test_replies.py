from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from core.kafka_config import consumer_config
from core.settings import KafkaSettings, TopicSettings
from producer_api.replies import PendingReplies, ReplyListener, listener_config
from schemas import REPLY_CODEC, CaptionReply, ReplyError, ReplyStatus
from tests.support.kafka import publish


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


HOSTILE = b"a record whose reading raises"


def decode_or_raise(value: bytes) -> CaptionReply:
    """The codec, but a hostile record makes it raise what no codec error covers (the worst case)."""
    if value == HOSTILE:
        raise RuntimeError("a reader bug this record found")
    return REPLY_CODEC.decode(value)


def unreadable() -> float:
    return REGISTRY.get_sample_value("captioner_api_replies_unreadable_total") or 0.0


@pytest.mark.integration
async def test_a_record_whose_reading_raises_is_skipped_and_the_next_reply_delivered(
    kafka_bootstrap: str, topics: TopicSettings
) -> None:
    pending = PendingReplies()
    listener = ReplyListener(
        config=consumer_config(KafkaSettings(), topics, client_id="test-api", group_id="test-api"),
        topic=topics.replies,
        partition=1,
        pending=pending,
        loop=asyncio.get_running_loop(),
        decode=decode_or_raise,
    )
    await asyncio.to_thread(listener.start, timeout_s=30.0)
    before = unreadable()
    try:
        waiting = pending.expect("after-the-hostile-one")
        await asyncio.to_thread(publish, kafka_bootstrap, topics.replies, HOSTILE, partition=1)
        reply = make_reply("after-the-hostile-one", title="still delivered")
        await asyncio.to_thread(
            publish, kafka_bootstrap, topics.replies, REPLY_CODEC.encode(reply), partition=1
        )

        assert (await asyncio.wait_for(waiting, timeout=30)).title == "still delivered"
        assert listener.alive()
        assert unreadable() == before + 1
    finally:
        await asyncio.to_thread(listener.close, timeout_s=5.0)
