"""`/readyz` in process: 503 with the failing check named while the reply listener's thread is dead, while no
worker holds request partitions, or while the workers' group cannot be described; 200 when all pass."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaError, KafkaException

from core.settings import ApiSettings, ImageSettings
from producer_api.app import make_api_app
from producer_api.readiness import (
    DESCRIBE_REQUEST_TIMEOUT_S,
    READINESS,
    BrokerCheck,
    Readiness,
    WorkerGroup,
    WorkersCheck,
)


@dataclass
class FakeListener:
    running: bool = True
    partition: int = 3

    def alive(self) -> bool:
        return self.running


@dataclass
class FakeGroup:
    """The workers' group as the admin client would describe it: members holding request partitions."""

    holders: int = 1
    unreachable: bool = False
    asked_from: str | None = None

    def __call__(self) -> int:
        self.asked_from = threading.current_thread().name
        if self.unreachable:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return self.holders


async def answer_true() -> bool:
    return True


Probe = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
async def probe() -> AsyncIterator[Probe]:
    clients: list[TestClient[Any, Any]] = []

    async def readyz(
        listener: FakeListener, group: FakeGroup | None, **readers: FakeListener
    ) -> tuple[int, dict[str, Any]]:
        app = make_api_app(api=ApiSettings(instance_id="test"), images=ImageSettings())
        workers = WorkersCheck(group, group_id="the-workers", cache_s=0) if group else None
        broker = BrokerCheck(answer_true, cache_s=0)
        app[READINESS] = Readiness(listener=listener, broker=broker, workers=workers, **readers)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        async with client.get("/readyz") as response:
            return response.status, await response.json()

    yield readyz
    for client in clients:
        await client.close()


async def test_ready_when_the_listener_runs_and_a_worker_holds_request_partitions(probe: Probe) -> None:
    group = FakeGroup(holders=2)

    status, body = await probe(FakeListener(), group)

    assert status == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["workers"] == {"ok": True, "group": "the-workers", "assigned": 2}
    assert body["checks"]["reply_listener"] == {"ok": True, "partition": 3}
    assert group.asked_from != "MainThread"  # the admin client blocks: never on the event loop


async def test_not_ready_while_the_reply_listeners_thread_is_dead(probe: Probe) -> None:
    status, body = await probe(FakeListener(running=False), FakeGroup())

    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["reply_listener"]["ok"] is False
    assert body["checks"]["reply_listener"]["reason"] == "the reply listener's thread has stopped"


async def test_not_ready_while_the_caption_cache_readers_thread_is_dead(probe: Probe) -> None:
    status, body = await probe(FakeListener(), FakeGroup(), cache_reader=FakeListener(running=False))

    assert status == 503
    assert body["checks"]["cache_reader"] == {
        "ok": False,
        "reason": "the caption-cache reader's thread has stopped",
    }
    assert body["checks"]["reply_listener"]["ok"] is True


async def test_an_instance_reading_the_cache_is_ready_while_its_reader_runs(probe: Probe) -> None:
    status, body = await probe(FakeListener(), FakeGroup(), cache_reader=FakeListener())

    assert status == 200, body
    assert body["checks"]["cache_reader"] == {"ok": True}


async def test_not_ready_while_no_worker_holds_request_partitions(probe: Probe) -> None:
    status, body = await probe(FakeListener(), FakeGroup(holders=0))

    assert status == 503
    assert body["checks"]["workers"]["ok"] is False
    assert body["checks"]["workers"]["assigned"] == 0
    assert "no worker" in body["checks"]["workers"]["reason"]


async def test_not_ready_when_the_group_cannot_be_described(probe: Probe) -> None:
    status, body = await probe(FakeListener(), FakeGroup(unreachable=True))

    assert status == 503
    assert body["checks"]["workers"]["reason"] == "the workers' consumer group could not be described"
    assert "Local" not in str(body)  # what librdkafka said stays in the log


async def test_an_instance_told_not_to_wait_for_workers_skips_that_check(probe: Probe) -> None:
    status, body = await probe(FakeListener(), None)

    assert status == 200, body
    assert "workers" not in body["checks"]


async def test_the_group_is_asked_at_most_once_per_cache_period() -> None:
    group = FakeGroup(holders=1)
    calls = 0

    def counted() -> int:
        nonlocal calls
        calls += 1
        return group()

    check = WorkersCheck(counted, group_id="g", cache_s=3600)
    first, second = await check.check(), await check.check()

    assert first == second and first.ok
    assert calls == 1


async def test_before_the_kafka_clients_start_it_is_not_ready() -> None:
    app = make_api_app(api=ApiSettings(instance_id="test"), images=ImageSettings())
    async with TestClient(TestServer(app)) as client, client.get("/readyz") as response:
        assert response.status == 503
        assert (await response.json())["status"] == "not_ready"


@dataclass
class CountedBroker:
    """The broker's metadata check, counting its calls and how many ran at once."""

    calls: int = 0
    running: int = 0
    most_at_once: int = 0

    async def __call__(self) -> bool:
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(0)  # a real check awaits a thread: let the other probes in meanwhile
        self.running -= 1
        return True


async def test_a_flood_of_probes_costs_one_broker_check_and_one_group_check() -> None:
    broker, group = CountedBroker(), FakeGroup(holders=1)
    group_calls = 0

    def counted_group() -> int:
        nonlocal group_calls
        group_calls += 1
        return group()

    app = make_api_app(api=ApiSettings(instance_id="test"), images=ImageSettings())
    app[READINESS] = Readiness(
        listener=FakeListener(),
        broker=BrokerCheck(broker, cache_s=3600),
        workers=WorkersCheck(counted_group, group_id="g", cache_s=3600),
    )
    async with TestClient(TestServer(app)) as client:

        async def readyz() -> int:
            async with client.get("/readyz") as response:
                return response.status

        statuses = await asyncio.gather(*(readyz() for _ in range(50)))

    assert statuses == [200] * 50
    assert (broker.calls, group_calls) == (1, 1)


async def test_at_most_one_broker_check_is_in_flight_even_uncached() -> None:
    broker = CountedBroker()
    check = BrokerCheck(broker, cache_s=0)

    answers = await asyncio.gather(*(check.check() for _ in range(50)))

    assert all(answer.ok for answer in answers)
    assert broker.most_at_once == 1


class FakeAdmin:
    """An AdminClient's describe_consumer_groups, answered when the test says."""

    def __init__(self) -> None:
        self.asked: list[tuple[list[str], float]] = []
        self.futures: list[Future[Any]] = []

    def poll(self, timeout: float) -> int:
        return 0

    def describe_consumer_groups(
        self, group_ids: list[str], request_timeout: float
    ) -> dict[str, Future[Any]]:
        self.asked.append((group_ids, request_timeout))
        self.futures.append(Future())
        return {group_ids[0]: self.futures[-1]}


def worker_group(
    admin: FakeAdmin, *, reachable: bool = True, clock: list[float] | None = None
) -> WorkerGroup:
    now = clock if clock is not None else [0.0]
    return WorkerGroup(
        admin,  # type: ignore[arg-type]
        group_id="the-workers",
        topic="requests",
        reachable=lambda: reachable,
        clock=lambda: now[0],
        describe_timeout_s=0.01,  # each description here is answered at once or never
    )


def described(*topics: str) -> SimpleNamespace:
    member = SimpleNamespace(
        assignment=SimpleNamespace(topic_partitions=[SimpleNamespace(topic=topic) for topic in topics])
    )
    return SimpleNamespace(members=[member])


def test_the_group_is_not_described_while_no_broker_is_reachable() -> None:
    """librdkafka#4605: a group-coordinator request that times out while no coordinator is reachable
    aborts the process when one comes back."""
    admin = FakeAdmin()

    with pytest.raises(KafkaException):
        worker_group(admin, reachable=False).holders()
    assert admin.asked == []


def test_a_description_still_unanswered_is_waited_on_by_the_next_caller_not_asked_again() -> None:
    admin = FakeAdmin()
    group = worker_group(admin)

    with pytest.raises(TimeoutError):
        group.holders()
    admin.futures[0].set_result(described("requests", "other"))
    assert group.holders() == 1

    assert [timeout for _, timeout in admin.asked] == [DESCRIBE_REQUEST_TIMEOUT_S]
    with pytest.raises(TimeoutError):
        group.holders()  # the last was answered: this caller asks again
    assert len(admin.asked) == 2
    assert DESCRIBE_REQUEST_TIMEOUT_S >= 600  # librdkafka must not time it out during any short outage


def test_a_description_answered_long_after_its_caller_gave_up_is_asked_again() -> None:
    admin, clock = FakeAdmin(), [0.0]
    group = worker_group(admin, clock=clock)
    with pytest.raises(TimeoutError):
        group.holders()
    admin.futures[0].set_result(described("requests"))

    clock[0] += 60
    with pytest.raises(TimeoutError):
        group.holders()  # the answer in hand is a minute old: asked again, and not answered yet
    assert len(admin.asked) == 2
