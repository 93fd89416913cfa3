"""Batch reads that never wait to fill a batch.

librdkafka's `consume(num_messages, timeout)` blocks until it has num_messages or the timeout ends,
so a lone message waits out the whole timeout. Polling for the first message and then taking only
what is already queued keeps latency at the arrival time and still batches under load.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def poll_batch(consumer: Consumer, *, max_messages: int, timeout_s: float) -> list[Message]:
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(num_messages=max_messages - 1, timeout=0)]
