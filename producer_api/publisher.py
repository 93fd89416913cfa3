"""Publishes caption jobs from the event loop. A small record is handed to librdkafka on the loop, which
costs less than a hand-off to a thread and back; a large one (librdkafka copies it) on a thread of its
own. Another thread serves delivery reports in batches, a few times a second, and only a failed one wakes
the event loop: the job's reply is what the caller waits for, so its delivery costs the loop nothing."""

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
# Delivery reports are served this often, all that have come each time: a delivered job's report needs
# nobody (its reply is what the request awaits), so waking for each would cost a thread switch a request,
# and a failed one still reaches its request within this.
DELIVERY_REPORTS_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    failed: asyncio.Future[Any]  # only a failure settles it


class RequestPublisher:
    """`send(...)` hands a record over and returns at once; a record refused or not delivered (acks=all,
    within message.timeout.ms) sets its error on the future it came with."""

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

    def send(
        self,
        *,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        failed: asyncio.Future[Any],
    ) -> None:
        """Hands the record over and returns. A record the producer refuses or cannot deliver sets its error
        on `failed` (unless that is done by then); a delivered one does not even wake the event loop, so
        the caller awaits `failed` as the future of what the record leads to (its reply). Raises
        BrokerUnavailableError at once while the brokers are known to be down."""
        if self.brokers_down:
            raise BrokerUnavailableError("Kafka is unreachable; try again shortly")
        item = _Outgoing(topic=topic, key=key, value=value, headers=list(headers or []), failed=failed)
        if len(value) <= INLINE_PRODUCE_MAX_BYTES:
            self._produce(item)
        else:
            self._outgoing.put(item)

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

    async def close(self, *, timeout_s: float) -> int:
        """Delivers what is queued within timeout_s (each report served) and stops; returns how many
        records were left undelivered."""
        self._outgoing.put(None)
        await asyncio.to_thread(self._producing.join, timeout_s)
        remaining = await asyncio.to_thread(self._flush, timeout_s)
        if remaining:
            log.warning("%d job records were not delivered before shutdown", remaining)
        self._closed.set()
        await asyncio.to_thread(self._delivering.join, timeout_s)
        return remaining

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
        while not self._closed.wait(DELIVERY_REPORTS_INTERVAL_S):
            self._producer.poll(0)

    def _produce(self, item: _Outgoing) -> None:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self.brokers_down = False
                return
            undelivered = BrokerUnavailableError("the job was not delivered to Kafka", detail=error.str())
            self._loop.call_soon_threadsafe(_fail, item.failed, undelivered)

        try:
            self._producer.produce(
                item.topic, key=item.key, value=item.value, headers=item.headers, on_delivery=on_delivery
            )
        except BufferError:
            self._loop.call_soon_threadsafe(
                _fail,
                item.failed,
                OverloadedError("the local Kafka send queue is full", retry_after_s=RETRY_AFTER_S),
            )
        except Exception as exc:
            refused = BrokerUnavailableError("Kafka did not accept the job", detail=str(exc))
            self._loop.call_soon_threadsafe(_fail, item.failed, refused)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self.brokers_down:  # librdkafka says it again at each reconnection round
                log.warning("all Kafka brokers are down (%s): requests get 503 until one is back", error)
            self.brokers_down = True


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
