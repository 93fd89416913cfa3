"""The feeder decodes ahead only as far as the batching policy's backlog allows."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from confluent_kafka import Message

from inference_consumer.feeder import JobFeeder
from inference_consumer.jobs import Job
from inference_consumer.offsets import OffsetTracker
from inference_consumer.validation import RequestRules
from schemas import REQUEST_CODEC
from tests.support.kafka import caption_request


class IdleProducer:
    def __init__(self) -> None:
        self.polls = 0

    def poll(self, _timeout: float = 0) -> int:
        self.polls += 1
        return 0


class Backlog:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self) -> int:
        return self.size


def request_message(offset: int) -> Message:
    request = caption_request(b"img", reply_topic="results", correlation_id=f"c-{offset}")
    return Message(
        topic="captioner.requests",
        partition=0,
        offset=offset,
        key=request.correlation_id.encode(),
        value=REQUEST_CODEC.encode(request),
        headers=[],
        timestamp=(1, 0),
    )


@pytest.fixture
def backlog() -> Backlog:
    return Backlog(2)


@pytest.fixture
def ready() -> queue.Queue[Job]:
    return queue.Queue()


@pytest.fixture
def fatal_reasons() -> list[str]:
    return []


@pytest.fixture
def feeder(backlog: Backlog, ready: queue.Queue[Job], fatal_reasons: list[str]) -> Iterator[JobFeeder]:
    unused: Any = None  # the backlog path touches neither the consumer nor the outcomes
    with ThreadPoolExecutor(1) as pool:
        feeder = JobFeeder(
            consumer=unused,
            producer=IdleProducer(),  # type: ignore[arg-type]
            topics=["captioner.requests"],
            retry_topics=set(),
            tracker=OffsetTracker(),
            outcomes=unused,
            ready=ready,
            backlog=backlog,
            decode_pool=pool,
            preprocess=lambda _data: torch.zeros(3, 2, 2),
            fetch_size=8,
            revoke_timeout_s=1.0,
            rules=RequestRules(own_topics=frozenset(["captioner.requests"])),
            reply_partitions=lambda _topic: 4,
            max_hold_s=1.0,
            on_fatal=fatal_reasons.append,
        )
        yield feeder
        feeder.stopping.set()


def take_in_background(feeder: JobFeeder, offset: int) -> threading.Thread:
    taking = threading.Thread(target=feeder._take, args=(request_message(offset),), daemon=True)
    taking.start()
    return taking


def test_jobs_wait_while_the_backlog_is_full(feeder: JobFeeder, ready: queue.Queue[Job]) -> None:
    feeder._take(request_message(0))
    feeder._take(request_message(1))

    third = take_in_background(feeder, 2)
    third.join(0.2)
    assert third.is_alive() and ready.qsize() == 2

    assert ready.get_nowait().offset == 0  # the inference loop takes a job
    third.join(2.0)
    assert not third.is_alive()
    assert [ready.get_nowait().offset for _ in range(2)] == [1, 2]


def test_a_larger_backlog_lets_waiting_jobs_in(
    feeder: JobFeeder, ready: queue.Queue[Job], backlog: Backlog
) -> None:
    feeder._take(request_message(0))
    feeder._take(request_message(1))
    third = take_in_background(feeder, 2)
    third.join(0.2)
    assert third.is_alive()

    backlog.size = 4  # the policy saw a faster batch
    third.join(2.0)

    assert not third.is_alive() and ready.qsize() == 3


def test_stopping_leaves_a_waiting_job_out(feeder: JobFeeder, ready: queue.Queue[Job]) -> None:
    feeder._take(request_message(0))
    feeder._take(request_message(1))
    third = take_in_background(feeder, 2)
    third.join(0.2)

    feeder.stopping.set()
    third.join(2.0)

    assert not third.is_alive() and ready.qsize() == 2
