"""The request publisher against a broker that never answers: what it refuses, and how; and which thread
hands each record to librdkafka."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from producer_api.errors import BrokerUnavailableError, OverloadedError
from producer_api.publisher import INLINE_PRODUCE_MAX_BYTES, RequestPublisher


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
        jobs = [publisher.publish(topic="t", key=b"k", value=b"v") for _ in range(2)]
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
                await asyncio.wait_for(publisher.publish(topic="t", key=b"k", value=value), 30)
        await publisher.close(timeout_s=5)

    small, large = publisher.produced_on
    assert small is threading.current_thread()  # the loop's
    assert large.name == "request-producer"
