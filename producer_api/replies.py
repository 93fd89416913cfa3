"""Reads this instance's reply partition and hands each reply to the request waiting for it.

Each API instance owns one partition of the shared reply topic and reads it with assign(), not
a group: no rebalance can move it away while a request waits, and other instances' replies
never reach this one (unless two instances are configured with the same partition, which costs
only the reading of each other's records).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from core.broker_watch import BrokerWatch
from producer_api import metrics
from producer_api.topic_reader import TopicReader, watermarks
from schemas import REPLY_CODEC, CaptionerError, CaptionReply, ReplyStatus

log = logging.getLogger(__name__)


class PendingReplies:
    """Correlation id -> the future its HTTP request awaits. Event-loop only."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[CaptionReply]] = {}
        self._retrying: dict[str, CaptionReply] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, correlation_id: str) -> asyncio.Future[CaptionReply]:
        future: asyncio.Future[CaptionReply] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> CaptionReply | None:
        """Stop waiting; returns the last RETRYING notice for this id, if one came."""
        self._waiting.pop(correlation_id, None)
        return self._retrying.pop(correlation_id, None)

    def deliver(self, replies: list[CaptionReply]) -> None:
        """Settle each waiting future once; a RETRYING notice is kept but the wait goes on."""
        for reply in replies:
            future = self._waiting.get(reply.correlation_id)
            if future is None or future.done():
                metrics.REPLIES_UNCLAIMED.inc()
                continue
            if reply.status is ReplyStatus.RETRYING:
                self._retrying[reply.correlation_id] = reply
            else:
                future.set_result(reply)


def listener_config(config: dict[str, Any]) -> dict[str, Any]:
    """The reply consumer commits nothing (it starts at the end it saw at start-up), and should its position
    ever be out of range (a leader that lost records: not with acks=all and clean elections), it re-reads the
    partition from its start rather than jumping to the end: replies nobody waits for are dropped, and none
    that somebody waits for is skipped."""
    return config | {"enable.auto.commit": False, "auto.offset.reset": "earliest"}


class ReplyListener:
    def __init__(
        self,
        *,
        config: dict[str, Any],
        topic: str,
        partition: int,
        pending: PendingReplies,
        loop: asyncio.AbstractEventLoop,
        decode: Callable[[bytes], CaptionReply] = REPLY_CODEC.decode,
        brokers: BrokerWatch | None = None,
    ) -> None:
        """decode: either framing (schemas/framing.py); a registry look-up runs on the listener's thread.
        `brokers` takes the consumer's log lines and errors."""
        self._decode = decode
        self.topic = topic
        self.partition = partition
        self._pending = pending
        self._loop = loop
        callbacks = (
            {"error_cb": self._on_client_error}
            if brokers is None
            else brokers.client_config(error_cb=self._on_client_error)
        )
        self._consumer = Consumer(listener_config(config) | callbacks)
        self._replies: list[CaptionReply] = []  # the current poll's, on the reader's thread
        self.reader = TopicReader(
            name="reply-listener",
            consumer=self._consumer,
            handle=self._read,
            after_poll=self._hand_over,
            on_failure=metrics.REPLIES_UNREADABLE.inc,
        )
        self.brokers_down = False

    def start(self, *, timeout_s: float) -> None:
        """Assign the partition at its current end, so no reply produced after this can be missed."""
        _low, high = watermarks(self._consumer, self.topic, self.partition, timeout_s=timeout_s)
        start = high if high >= 0 else OFFSET_END
        self._consumer.assign([TopicPartition(self.topic, self.partition, start)])
        self.reader.start()

    def alive(self) -> bool:
        """False before start() and once the thread has ended."""
        return self.reader.alive()

    def close(self, *, timeout_s: float) -> None:
        self.reader.close(timeout_s=timeout_s)

    def _read(self, message: Message) -> None:
        if message.error():
            log.warning("reply topic error: %s", message.error())
            return
        try:
            self._replies.append(self._decode(message.value() or b""))
        except CaptionerError as exc:  # unreadable, or a registry that cannot say how to read it
            metrics.REPLIES_UNREADABLE.inc()
            log.error("unreadable reply at %s[%d]@%d: %s", self.topic, self.partition, message.offset(), exc)

    def _hand_over(self, messages: list[Message]) -> None:
        if messages:
            self.brokers_down = False
        replies, self._replies = self._replies, []
        if replies:
            self._loop.call_soon_threadsafe(self._pending.deliver, replies)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.brokers_down = True
