"""A worker's Kafka steps wait only while a broker is there to wait for, and all of a stop's steps
together within the shutdown timeout."""

from __future__ import annotations

import threading

from inference_consumer.kafka_waits import KafkaWaits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Broker:
    def __init__(self, *, up: bool) -> None:
        self.up = up

    def __call__(self) -> bool:
        return self.up


class StuckProducer:
    """Holds `held` records that no flush delivers; each flush spends its whole timeout."""

    def __init__(self, clock: Clock, held: int) -> None:
        self.clock, self.held, self.flushes = clock, held, 0

    def __len__(self) -> int:
        return self.held

    def flush(self, timeout: float = -1) -> int:
        self.flushes += 1
        self.clock.now += timeout
        return self.held


class HangingConsumer:
    """A close that never returns, like librdkafka's whose group coordinator went away mid-commit."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def close(self) -> None:
        self.entered.set()
        self.release.wait()


def test_no_broker_means_no_flush_wait() -> None:
    clock = Clock()
    waits = KafkaWaits(timeout_s=30, reachable=Broker(up=False), clock=clock)
    producer = StuckProducer(clock, held=3)

    assert waits.flush(producer) == 3
    assert producer.flushes == 0


def test_a_flush_ends_at_its_cap_while_the_broker_answers() -> None:
    clock = Clock()
    waits = KafkaWaits(timeout_s=30, reachable=Broker(up=True), clock=clock)
    producer = StuckProducer(clock, held=3)

    assert waits.flush(producer, cap_s=5) == 3
    assert clock.now == 5


def test_every_step_of_a_stop_ends_by_one_deadline() -> None:
    clock = Clock()
    waits = KafkaWaits(timeout_s=30, reachable=Broker(up=True), clock=clock)
    waits.stop()
    clock.now = 20
    waits.stop()  # a second signal does not move the deadline

    assert waits.left_s() == 10
    producer = StuckProducer(clock, held=1)
    waits.flush(producer)
    assert clock.now == 30
    assert waits.left_s() == 0


def test_a_close_that_never_returns_is_given_up_on_once_no_broker_is_reachable() -> None:
    broker = Broker(up=True)
    waits = KafkaWaits(timeout_s=3600, reachable=broker)
    consumer = HangingConsumer()
    broker.up = False
    try:
        assert waits.close(consumer, name="requests") is False
        assert consumer.entered.is_set()
    finally:
        consumer.release.set()


def test_a_close_that_returns_is_waited_for() -> None:
    consumer = HangingConsumer()
    consumer.release.set()

    assert KafkaWaits(timeout_s=30, reachable=Broker(up=False)).close(consumer, name="retries") is True
