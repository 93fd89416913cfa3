"""The request publisher against a broker that never answers: what it refuses, and how."""

from __future__ import annotations

import asyncio
import socket

from producer_api.errors import BrokerUnavailableError, OverloadedError
from producer_api.publisher import RequestPublisher


async def test_a_full_send_queue_is_a_429_that_says_when_to_come_back() -> None:
    """Like admission's 429, the send queue's tells the caller when to try again (Retry-After)."""
    # Accepts connections and never answers: the client neither learns the brokers are down nor
    # delivers, so the first job stays queued and the second finds the one-message queue full.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        host, port = silent.getsockname()
        config = {
            "bootstrap.servers": f"{host}:{port}",
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
