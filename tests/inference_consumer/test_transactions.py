"""The exactly-once sink's way out of a librdkafka call that never returns (librdkafka#5456): a new producer
takes the transactional id over, and only producers still stuck count against the worker's limit.
The transactions themselves are tested against a real broker in tests/integration/test_exactly_once.py
and test_coordinator_moves.py; here a producer whose offsets call hangs stands in for the bug."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from core.offsets import OffsetTracker
from inference_consumer import transactions
from inference_consumer.kafka_waits import KafkaWaits
from inference_consumer.transactions import TransactionalSink

TOPIC = "captioner.requests"


class HangingProducer:
    """Its send_offsets_to_transaction waits, past any timeout, until released."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def send_offsets_to_transaction(self, *_args: Any) -> None:
        self.released.wait()

    def init_transactions(self, *_args: Any) -> None:
        pass

    def begin_transaction(self) -> None:
        pass

    def poll(self, *_args: Any) -> int:
        return 0


class Member:
    def consumer_group_metadata(self) -> object:
        return object()


@pytest.fixture
def producers() -> Iterator[list[HangingProducer]]:
    made: list[HangingProducer] = []
    yield made
    for producer in made:
        producer.released.set()


@pytest.fixture
def fatal() -> list[str]:
    return []


@pytest.fixture
def sink(
    producers: list[HangingProducer], fatal: list[str], monkeypatch: pytest.MonkeyPatch
) -> TransactionalSink:
    monkeypatch.setattr(transactions, "_STUCK_S", 1.0)

    def new_producer() -> HangingProducer:
        producers.append(HangingProducer())
        return producers[-1]

    tracker = OffsetTracker()
    tracker.track(TOPIC, 0, 5)
    tracker.finish(TOPIC, 0, 5)  # one finished offset to commit, again after each failed try
    sink = TransactionalSink(
        producer=new_producer(),  # type: ignore[arg-type]
        new_producer=new_producer,  # type: ignore[arg-type]
        tracker=tracker,
        waits=KafkaWaits(timeout_s=1.0, reachable=lambda: True),
        delivery_timeout_s=30.0,
        transaction_timeout_s=60.0,
        on_fatal=fatal.append,
    )
    member = Member()
    sink.add_group(member, [TOPIC])  # type: ignore[arg-type]
    sink.store(member, [TOPIC])  # type: ignore[arg-type]
    return sink


def test_a_replaced_producer_whose_call_returned_no_longer_counts(
    sink: TransactionalSink, producers: list[HangingProducer], fatal: list[str]
) -> None:
    for _ in range(transactions._MAX_REPLACED + 2):
        assert sink.commit() is False  # stuck, so replaced
        producers[-2].released.set()  # the stuck call returns, late

    assert fatal == []
    assert len(producers) == transactions._MAX_REPLACED + 3


def test_a_worker_halts_once_as_many_replaced_producers_as_it_keeps_are_still_stuck(
    sink: TransactionalSink, producers: list[HangingProducer], fatal: list[str]
) -> None:
    for _ in range(transactions._MAX_REPLACED + 1):
        assert sink.commit() is False

    [reason] = fatal
    assert "still stuck" in reason
    assert len(producers) == transactions._MAX_REPLACED + 1
