"""The request publisher: against a broker that never answers, what it refuses, and how, and which thread
hands each record to librdkafka; against a real one, that a delivered record leaves the event loop alone."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from core.kafka_config import producer_config
from core.settings import KafkaSettings, TopicSettings
from producer_api.errors import BrokerUnavailableError, OverloadedError
from producer_api.publisher import DELIVERY_REPORTS_INTERVAL_S, INLINE_PRODUCE_MAX_BYTES, RequestPublisher
from tests.support.waiting import wait_until_async


@contextmanager
def silent_broker() -> Iterator[str]:
    """A bootstrap address that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        host, port = silent.getsockname()
        yield f"{host}:{port}"


class ThreadNotingPublisher(RequestPublisher):
    """Notes the thread each record is handed to librdkafka on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.produced_on: list[threading.Thread] = []

    def _produce(self, item: Any) -> None:
        self.produced_on.append(threading.current_thread())
        super()._produce(item)


def sent(publisher: RequestPublisher, value: bytes) -> asyncio.Future[None]:
    """The future a record's failure is set on, as the API's reply future."""
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    publisher.send(topic="t", key=b"k", value=value, failed=failed)
    return failed


async def test_a_full_send_queue_is_a_429_that_says_when_to_come_back() -> None:
    """Like admission's 429, the send queue's tells the caller when to try again (Retry-After)."""
    # Accepts connections and never answers: the client neither learns the brokers are down nor
    # delivers, so the first job stays queued and the second finds the one-message queue full.
    with silent_broker() as bootstrap:
        config = {
            "bootstrap.servers": bootstrap,
            "queue.buffering.max.messages": 1,
            "message.timeout.ms": 1000,
        }
        publisher = RequestPublisher(config=config, loop=asyncio.get_running_loop())
        publisher.start()
        jobs = [sent(publisher, b"v") for _ in range(2)]
        queued, refused = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 30)
        await publisher.close(timeout_s=5)

    assert isinstance(queued, BrokerUnavailableError), queued  # undelivered by message.timeout.ms
    assert isinstance(refused, OverloadedError), refused
    assert isinstance(refused.fields.get("retry_after_s"), int), refused.fields


async def test_a_small_record_is_produced_on_the_loop_and_a_large_one_on_the_producer_thread() -> None:
    with silent_broker() as bootstrap:
        config = {"bootstrap.servers": bootstrap, "message.timeout.ms": 1000}
        publisher = ThreadNotingPublisher(config=config, loop=asyncio.get_running_loop())
        publisher.start()
        values = [b"s" * INLINE_PRODUCE_MAX_BYTES, b"l" * (INLINE_PRODUCE_MAX_BYTES + 1)]
        for value in values:  # one at a time, so the threads are noted in order
            with pytest.raises(BrokerUnavailableError):  # undelivered within message.timeout.ms
                await asyncio.wait_for(sent(publisher, value), 30)
        await publisher.close(timeout_s=5)

    small, large = publisher.produced_on
    assert small is threading.current_thread()  # the loop's
    assert large.name == "request-producer"


class CallCountingLoop:
    """The running loop, counting what other threads hand it (call_soon_threadsafe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.handed: list[object] = []

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> asyncio.Handle:
        self.handed.append(callback)
        return self._loop.call_soon_threadsafe(callback, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


@pytest.mark.integration
async def test_a_delivered_record_neither_settles_its_future_nor_wakes_the_loop(
    kafka_bootstrap: str, topics: TopicSettings
) -> None:
    """The API waits for the job's reply, not its acknowledgement: a delivery report that says all is well
    must cost the event loop nothing."""
    loop = CallCountingLoop(asyncio.get_running_loop())
    config = producer_config(KafkaSettings(), topics, client_id="test-publisher")
    publisher = RequestPublisher(config=config, loop=loop)  # type: ignore[arg-type]  # a counting proxy
    publisher.start()
    values = [b"s" * 100, b"l" * (INLINE_PRODUCE_MAX_BYTES + 1)]  # on the loop, and on the producer thread
    failed = [asyncio.get_running_loop().create_future() for _ in values]
    for value, future in zip(values, failed, strict=True):
        publisher.send(topic=topics.requests, key=b"k", value=value, failed=future)
    undelivered = await publisher.close(timeout_s=30)  # every delivery report served

    assert undelivered == 0
    assert not any(future.done() for future in failed)
    assert loop.handed == []


class PollNotingProducer:
    """The publisher's producer, noting each poll's timeout and the thread it ran on."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.polls: list[tuple[str, float]] = []

    def poll(self, timeout: float) -> int:
        self.polls.append((threading.current_thread().name, timeout))
        return int(self._producer.poll(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def __len__(self) -> int:
        return len(self._producer)


@pytest.mark.integration
async def test_delivery_reports_are_served_in_batches_without_a_wake_for_each(
    kafka_bootstrap: str, topics: TopicSettings
) -> None:
    """The delivery-report thread never waits inside librdkafka, where each report would wake it: it looks
    now and then and serves what has come (a failed one still reaches its future: the tests above)."""
    config = producer_config(KafkaSettings(), topics, client_id="test-publisher")
    publisher = RequestPublisher(config=config, loop=asyncio.get_running_loop())
    noting = PollNotingProducer(publisher._producer)
    publisher._producer = noting  # type: ignore[assignment]  # a noting proxy
    started = time.monotonic()
    publisher.start()
    failed = [asyncio.get_running_loop().create_future() for _ in range(20)]
    for future in failed:
        publisher.send(topic=topics.requests, key=b"k", value=b"v", failed=future)
    await wait_until_async(  # every record delivered and its report served
        lambda: len(noting) == 0, timeout_s=30, message=lambda: f"{len(noting)} records unreported"
    )
    await publisher.close(timeout_s=30)
    elapsed_s = time.monotonic() - started

    reports_thread = [timeout for thread, timeout in noting.polls if thread == "delivery-reports"]
    assert reports_thread, noting.polls
    assert set(reports_thread) == {0}
    # ... nor spins instead: one look every DELIVERY_REPORTS_INTERVAL_S at most
    assert len(reports_thread) <= elapsed_s / DELIVERY_REPORTS_INTERVAL_S + 2
    assert not any(future.done() for future in failed)
