"""Open-loop traffic that checks every answer: a steady rate of requests over both API instances, whatever
the answers do, each one recorded with its outcome and whether the title it got is its own image's.

bench/load.py measures speed and keeps no answer bodies; here every body matters, the run has no fixed end
(the faults decide it) and the harness reads the outcomes while they come in, so the loop runs on a thread of
the harness (at a few dozen requests a second it costs the harness little).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.chaos.kafka_callers import KafkaCallers, takes
from core.event_loop import new_event_loop

_HEADERS = {"Content-Type": "image/jpeg"}
NO_ANSWER = 0  # status of a request that got no HTTP answer within the client timeout


@dataclass(frozen=True, slots=True)
class Answer:
    due: float  # time.monotonic() when the request was meant to go
    done: float
    api: int  # which API instance it went to
    image: int  # which image it carried
    status: int  # HTTP status, or NO_ANSWER
    id: str | None = None  # the correlation id in the body
    title_ok: bool | None = None  # a 200's title equals what the model gives for its image

    @property
    def latency_ms(self) -> float:
        return (self.done - self.due) * 1000


@dataclass(frozen=True)
class Workload:
    urls: tuple[str, ...]  # each API instance's predictions URL
    images: tuple[bytes, ...]
    titles: tuple[str, ...]  # the model's title of each image, from a quiet warm-up
    rate: float  # requests per second over all instances
    client_timeout_s: float
    kafka_caller_share: float = 0.0  # of the requests, published straight to the request topic

    @property
    def http_rate(self) -> float:
        """Requests per second sent to the API instances (the rest go straight to the request topic)."""
        return self.rate * (1 - self.kafka_caller_share)

    def pick(self, index: int) -> tuple[int, int]:
        """Request index -> (API instance, image): instances alternate, and each sees every image."""
        return index % len(self.urls), (index // len(self.urls)) % len(self.images)


class Traffic:
    """Sends the workload from start() until stop(); `answers` grows as answers come in."""

    def __init__(self, workload: Workload, kafka_callers: KafkaCallers | None = None) -> None:
        self.workload = workload
        self.kafka_callers = kafka_callers
        self.answers: list[Answer] = []
        self.started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-traffic", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stops sending and waits for every request in flight (at most the client timeout)."""
        self._stop.set()
        self._thread.join(self.workload.client_timeout_s + 30)
        if self._error is not None:
            raise RuntimeError("the traffic thread failed") from self._error

    def snapshot(self) -> list[Answer]:
        return list(self.answers)

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(self._send_all())
        except BaseException as exc:
            self._error = exc

    async def _send_all(self) -> None:
        workload = self.workload
        timeout = aiohttp.ClientTimeout(total=workload.client_timeout_s)
        connector = aiohttp.TCPConnector(limit=1024)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tasks: set[asyncio.Task[None]] = set()
            index = 0
            while not self._stop.is_set():
                due = self.started + index / workload.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if self.kafka_callers is not None and takes(index, workload.kafka_caller_share):
                    self.kafka_callers.send(index, workload.pick(index)[1], due)
                    index += 1
                    continue
                task = asyncio.create_task(self._send(session, index, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
            if tasks:
                await asyncio.gather(*tasks)

    async def _send(self, session: aiohttp.ClientSession, index: int, due: float) -> None:
        api, image = self.workload.pick(index)
        try:
            async with session.post(
                self.workload.urls[api], data=self.workload.images[image], headers=_HEADERS
            ) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError):
            self.answers.append(Answer(due, time.monotonic(), api, image, NO_ANSWER))
            return
        done = time.monotonic()
        answer = _parse(body)
        if status != 200:
            error = answer.get("error")
            correlation_id = error.get("id") if isinstance(error, dict) else None
            self.answers.append(Answer(due, done, api, image, status, id=correlation_id))
            return
        correlation_id = answer.get("id")
        title_ok = bool(correlation_id) and answer.get("title") == self.workload.titles[image]
        self.answers.append(Answer(due, done, api, image, status, id=correlation_id, title_ok=title_ok))


def _parse(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def wrong_titles(answers: Sequence[Answer]) -> int:
    return sum(1 for answer in answers if answer.status == 200 and not answer.title_ok)


def duplicate_ids(answers: Sequence[Answer]) -> int:
    """200s whose correlation id another 200 also carried: one reply handed to two callers."""
    ids = [answer.id for answer in answers if answer.status == 200]
    return len(ids) - len(set(ids))
