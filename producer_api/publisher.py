"""Publishes caption jobs from the event loop. A small record is handed to librdkafka on the loop, which
costs less than a hand-off to a thread and back; a large one (librdkafka copies it) on a thread of its
own. Another thread serves delivery reports the moment they arrive."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from core.broker_watch import BrokerWatch
from producer_api.admission import RETRY_AFTER_S
from producer_api.errors import BrokerUnavailableError, OverloadedError

log = logging.getLogger(__name__)

_FLUSH_SLICE_S = 0.1  # a flush at shutdown ends this soon after the last broker is lost
# A record at most this large is produced on the event loop (librdkafka copies it: microseconds).
INLINE_PRODUCE_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    future: asyncio.Future[None]


class RequestPublisher:
    """`await publish(...)` returns once the broker has acknowledged the record (acks=all)."""

    def __init__(
        self,
        *,
        config: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        brokers: BrokerWatch | None = None,
    ) -> None:
        """`brokers` takes the producer's log lines and errors and says whether a broker answers."""
        self._loop = loop
        self._brokers = brokers
        callbacks = (
            {"error_cb": self._on_client_error}
            if brokers is None
            else brokers.client_config(error_cb=self._on_client_error, statistics=False)
        )
        self._producer = Producer(config | callbacks)
        self._outgoing: queue.SimpleQueue[_Outgoing | None] = queue.SimpleQueue()
        self._producing = threading.Thread(target=self._produce_loop, name="request-producer", daemon=True)
        self._delivering = threading.Thread(target=self._delivery_loop, name="delivery-reports", daemon=True)
        self._closed = threading.Event()
        self.brokers_down = False

    def start(self) -> None:
        self._producing.start()
        self._delivering.start()

    async def publish(
        self, *, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        if self.brokers_down:
            raise BrokerUnavailableError("Kafka is unreachable; try again shortly")
        future: asyncio.Future[None] = self._loop.create_future()
        item = _Outgoing(topic=topic, key=key, value=value, headers=list(headers or []), future=future)
        if len(value) <= INLINE_PRODUCE_MAX_BYTES:
            self._produce(item)
        else:
            self._outgoing.put(item)
        await future

    async def check_broker(self, *, topic: str, timeout_s: float) -> bool:
        """True when the cluster answers a metadata request for topic within the timeout."""
        try:
            metadata = await asyncio.to_thread(self._producer.list_topics, topic, timeout=timeout_s)
        except Exception:
            return False
        found = metadata.topics.get(topic)
        return found is not None and found.error is None

    async def watch_brokers(self, *, topic: str, interval_s: float = 0.5) -> None:
        """While the brokers are down, requests are refused at once (503); this notices their return."""
        while True:
            await asyncio.sleep(interval_s)
            if self.brokers_down and await self.check_broker(topic=topic, timeout_s=interval_s * 2):
                log.info("Kafka is reachable again")
                self.brokers_down = False

    async def close(self, *, timeout_s: float) -> None:
        self._outgoing.put(None)
        await asyncio.to_thread(self._producing.join, timeout_s)
        remaining = await asyncio.to_thread(self._flush, timeout_s)
        if remaining:
            log.warning("%d job records were not delivered before shutdown", remaining)
        self._closed.set()
        await asyncio.to_thread(self._delivering.join, timeout_s)

    def _flush(self, timeout_s: float) -> int:
        """Within timeout_s, and only while a broker is reachable: with none, nothing queued can go."""
        if self._brokers is None:
            return int(self._producer.flush(timeout_s))
        give_up = time.monotonic() + timeout_s
        while len(self._producer) and self._brokers.reachable() and time.monotonic() < give_up:
            self._producer.flush(min(_FLUSH_SLICE_S, max(0.0, give_up - time.monotonic())))
        return len(self._producer)

    def _produce_loop(self) -> None:
        while (item := self._outgoing.get()) is not None:
            self._produce(item)

    def _delivery_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)  # returns as soon as a delivery report is ready

    def _produce(self, item: _Outgoing) -> None:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self.brokers_down = False
            self._loop.call_soon_threadsafe(_settle, item.future, error)

        try:
            self._producer.produce(
                item.topic, key=item.key, value=item.value, headers=item.headers, on_delivery=on_delivery
            )
        except BufferError:
            self._loop.call_soon_threadsafe(
                _fail,
                item.future,
                OverloadedError("the local Kafka send queue is full", retry_after_s=RETRY_AFTER_S),
            )
        except Exception as exc:
            refused = BrokerUnavailableError("Kafka did not accept the job", detail=str(exc))
            self._loop.call_soon_threadsafe(_fail, item.future, refused)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self.brokers_down:  # librdkafka says it again at each reconnection round
                log.warning("all Kafka brokers are down (%s): requests get 503 until one is back", error)
            self.brokers_down = True


def _settle(future: asyncio.Future[None], error: KafkaError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(BrokerUnavailableError("the job was not delivered to Kafka", detail=error.str()))


def _fail(future: asyncio.Future[None], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
