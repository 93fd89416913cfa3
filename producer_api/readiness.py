"""`GET /readyz`: ready only when this instance can answer a caption request end to end: its reply listener's
thread runs (and its caption-cache reader's, when it reads the cache), the broker answers, and at least one
worker of the group holds request partitions (a request published before then would wait for a worker to
join; docs/metrics.md, Readiness)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from producer_api import metrics

log = logging.getLogger(__name__)

# Each prober asks every few seconds; the broker and the group are asked at most this often, whoever asks
# (/readyz needs no key and takes no admission slot, so a flood of it costs one question per period).
WORKERS_CACHE_S = 3.0
BROKER_CACHE_S = 2.0
DESCRIBE_TIMEOUT_S = 2.0  # how long a /readyz waits for the group's description
# librdkafka aborts the process when a group-coordinator admin request times out while it waits for a
# coordinator and one then comes back (librdkafka#4605, unfixed in 2.16). So the description librdkafka
# is asked for may wait as long as it allows (an hour), a /readyz waits DESCRIBE_TIMEOUT_S of it, and the
# next one waits on the same request.
DESCRIBE_REQUEST_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Check:
    ok: bool
    facts: dict[str, Any] = field(default_factory=dict)  # what the check saw, for the JSON body
    reason: str | None = None  # a plain sentence when not ok

    def body(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.facts} | ({"reason": self.reason} if self.reason else {})


class CountHolders(Protocol):
    def __call__(self) -> int:
        """Blocking: how many members of the workers' group hold partitions of the request topic."""
        ...


class WorkerGroup:
    """Describes the workers' consumer group with an AdminClient (on a thread, never on the event loop).
    A description is asked for only while a broker is reachable, and at most one is in flight: one still
    unanswered when its caller gave up is the next caller's, and one answered longer than WORKERS_CACHE_S
    before that caller came is asked again."""

    def __init__(
        self,
        admin: AdminClient,
        *,
        group_id: str,
        topic: str,
        reachable: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        describe_timeout_s: float = DESCRIBE_TIMEOUT_S,
    ) -> None:
        """describe_timeout_s: how long `holders` waits for a description."""
        self._admin = admin
        self.group_id = group_id
        self._topic = topic
        self._reachable = reachable
        self._clock = clock
        self._describe_timeout_s = describe_timeout_s
        self._asked: Future[Any] | None = None  # of a ConsumerGroupDescription
        self._answered_at: float | None = None
        self._lock = threading.RLock()  # a cancelled probe's thread may still run beside the next one's

    def holders(self) -> int:
        self._admin.poll(0)  # hands over the client's log lines, which wait for a poll
        with self._lock:
            asked = self._asked if self._asked is not None and self._fresh() else self._ask()
        try:
            group = asked.result(timeout=self._describe_timeout_s)
        finally:
            with self._lock:  # one still in flight (TimeoutError) stays: the next caller waits on it
                if asked.done() and self._asked is asked:
                    self._asked = None
        return sum(
            1
            for member in group.members
            if member.assignment and any(tp.topic == self._topic for tp in member.assignment.topic_partitions)
        )

    def _fresh(self) -> bool:
        """Whether the description in hand is unanswered yet, or was answered within WORKERS_CACHE_S."""
        return self._answered_at is None or self._clock() - self._answered_at <= WORKERS_CACHE_S

    def _ask(self) -> Future[Any]:
        if not self._reachable():
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "no Kafka broker reachable"))
        [asked] = self._admin.describe_consumer_groups(
            [self.group_id], request_timeout=DESCRIBE_REQUEST_TIMEOUT_S
        ).values()
        self._asked, self._answered_at = asked, None
        asked.add_done_callback(self._answered)
        return asked

    def _answered(self, asked: Future[Any]) -> None:
        with self._lock:
            if asked is self._asked:
                self._answered_at = self._clock()


class CachedCheck:
    """A check's answer, kept cache_s; concurrent callers share the one question in flight."""

    def __init__(self, ask: Callable[[], Awaitable[Check]], *, cache_s: float) -> None:
        self._ask = ask
        self._cache_s = cache_s
        self._last: tuple[float, Check] | None = None
        self._asking = asyncio.Lock()

    async def check(self) -> Check:
        async with self._asking:
            if self._last is None or time.monotonic() - self._last[0] > self._cache_s:
                self._last = (time.monotonic(), await self._ask())
            return self._last[1]


class WorkersCheck:
    """The group's answer, kept WORKERS_CACHE_S; concurrent probes share one question to the broker."""

    def __init__(self, holders: CountHolders, *, group_id: str, cache_s: float = WORKERS_CACHE_S) -> None:
        self._holders = holders
        self._group_id = group_id
        self._cached = CachedCheck(self._ask, cache_s=cache_s)

    async def check(self) -> Check:
        return await self._cached.check()

    async def _ask(self) -> Check:
        facts: dict[str, Any] = {"group": self._group_id}
        try:
            holders = await asyncio.to_thread(self._holders)
        except (KafkaException, TimeoutError, OSError) as exc:
            log.info("could not describe consumer group %s: %s", self._group_id, exc)
            return Check(False, facts, "the workers' consumer group could not be described")
        metrics.WORKERS_ASSIGNED.set(holders)
        if holders == 0:
            return Check(False, facts | {"assigned": 0}, "no worker holds request partitions yet")
        return Check(True, facts | {"assigned": holders})


class ReplyListenerState(Protocol):
    partition: int

    def alive(self) -> bool: ...


class ReaderState(Protocol):
    def alive(self) -> bool: ...


class BrokerCheck:
    """Whether the broker answers a metadata request, kept BROKER_CACHE_S; concurrent probes share one."""

    def __init__(self, reachable: Callable[[], Awaitable[bool]], *, cache_s: float = BROKER_CACHE_S) -> None:
        self._reachable = reachable
        self._cached = CachedCheck(self._ask, cache_s=cache_s)

    async def check(self) -> Check:
        return await self._cached.check()

    async def _ask(self) -> Check:
        return Check(True) if await self._reachable() else Check(False, reason="Kafka does not answer")


@dataclass
class Readiness:
    listener: ReplyListenerState
    broker: BrokerCheck
    workers: WorkersCheck | None  # None: not waiting for workers (CAPTIONER_API_READY_NEEDS_WORKER=false)
    cache_reader: ReaderState | None = None  # None: this instance reads no caption cache

    async def checks(self) -> dict[str, Check]:
        facts = {"partition": self.listener.partition}
        listener = (
            Check(True, facts)
            if self.listener.alive()
            else Check(False, facts, "the reply listener's thread has stopped")
        )
        broker, workers = await asyncio.gather(self.broker.check(), self._workers())
        found = {"reply_listener": listener, "broker": broker}
        if self.cache_reader is not None:
            found["cache_reader"] = (
                Check(True)
                if self.cache_reader.alive()
                else Check(False, reason="the caption-cache reader's thread has stopped")
            )
        return found | ({"workers": workers} if workers else {})

    async def _workers(self) -> Check | None:
        return await self.workers.check() if self.workers else None


READINESS = web.AppKey("readiness", Readiness)


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app.get(READINESS)
    checks = await readiness.checks() if readiness else {"startup": Check(False, reason="starting")}
    ready = all(check.ok for check in checks.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": {name: check.body() for name, check in checks.items()},
    }
    return web.json_response(body, status=200 if ready else 503)
