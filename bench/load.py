"""The HTTP load client. It runs in its own process (LoadClient), so it never shares a GIL with the harness,
and it keeps its per-request work small: one aiohttp session with a keep-alive connection pool, payloads
built once, a single dispatcher coroutine for open-loop arrivals.

Three shapes of load:
* Sequential: one request at a time (idle latency);
* ClosedLoop: `concurrency` callers that each send the next request as soon as theirs is answered
  (saturation throughput), optionally after an unmeasured warm-up;
* OpenLoop: arrivals on a fixed schedule (uniform or Poisson) whatever the answers do; latency counts from
  when a request was due, so a slow server (or a late client) cannot hide queueing delay.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import multiprocessing
import os
import random
import signal
import struct
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

import aiohttp

from core.event_loop import new_event_loop

_HEADERS = {"Content-Type": "image/jpeg"}
_CONNECTIONS = 1024


@dataclass(frozen=True)
class Target:
    url: str  # http://127.0.0.1:<port>/api/v1/predictions
    payloads: tuple[bytes, ...]  # JPEG bodies, sent in turn
    timeout_s: float
    headers: tuple[tuple[str, str], ...] = ()  # besides Content-Type, on every request
    # Closed loop only: every n-th request (by the order they are sent, across callers) is a JPEG never
    # sent before (payloads[...] with a unique comment segment: other bytes, same pixels and work); 0: none.
    fresh_every: int = 0


def unique_jpeg(jpeg: bytes, tag: bytes) -> bytes:
    """The same picture under other bytes: a COM segment holding `tag` right after the SOI marker."""
    comment = b"captioner-bench " + tag
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


@dataclass(frozen=True)
class Sequential:
    target: Target
    count: int


@dataclass(frozen=True)
class ClosedLoop:
    target: Target
    concurrency: int
    min_s: float  # keep going at least this long ...
    min_completions: int  # ... and until this many answers came (successful or not) ...
    max_s: float  # ... but never longer than this
    # Sent from the start, but neither timed nor counted: the run's outcomes are those answered after it,
    # and the harness hears when it ends (LoadClient.run's on_measuring).
    warmup_s: float = 0.0


@dataclass(frozen=True)
class OpenLoop:
    target: Target
    rate: float  # requests per second
    duration_s: float
    poisson: bool
    seed: int = 0


LoadSpec = Sequential | ClosedLoop | OpenLoop


@dataclass(frozen=True, slots=True)
class Outcome:
    due: float  # perf_counter seconds (client process): when the request was meant to go
    sent: float
    done: float
    status: int  # HTTP status; 0 when no answer (connection error or client timeout)
    api_latency_ms: float | None = None  # from the 200 body: the API's own request time ...
    inference_ms: float | None = None  # ... and the worker's batch inference time
    words: int | None = None  # words in the caption
    worker_id: str | None = None  # the worker that answered (from the 200 body)
    cached: bool = False  # answered from the caption cache (from the 200 body)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def latency_ms(self) -> float:
        return (self.done - self.due) * 1000


@dataclass(frozen=True)
class LoadRun:
    outcomes: list[Outcome]  # every request sent
    started: float  # the measured window (_Window): all of the run, or a closed loop's warm-up to enough
    finished: float
    client_cpu_s: float  # CPU time the client process used in the window: its share of the machine
    max_lag_ms: float  # open loop: the latest a request was sent after it was due

    @property
    def wall_s(self) -> float:
        """The measured window's length (a closed loop's warm-up and drain are outside it)."""
        return self.finished - self.started

    @property
    def measured(self) -> list[Outcome]:
        """The outcomes answered within the measured window (`outcomes` also holds those before and after)."""
        return [outcome for outcome in self.outcomes if self.started <= outcome.done <= self.finished]

    @property
    def client_cpu_share(self) -> float:
        """Client CPU time over wall time: 1.0 is one core busy (the client is single-threaded)."""
        return self.client_cpu_s / self.wall_s if self.wall_s > 0 else math.nan


# ---- the client process ------------------------------------------------------------------------------


@dataclass
class _Window:
    """The measured window of a run: all of it, or for a closed loop from the end of its warm-up to the
    moment it has enough (its drain, the requests still in flight then, is not measured: at saturation
    the work in flight as the window opens and as it closes is alike, so the window holds a steady run's
    worth of work for the answers it counts)."""

    notify: Callable[[str], None]  # told "measuring" as the window opens and "measured" as it closes
    started: float = math.nan
    started_cpu: float = math.nan
    ended: float = math.nan
    ended_cpu: float = math.nan

    @property
    def measuring(self) -> bool:
        return math.isfinite(self.started) and not math.isfinite(self.ended)

    def open(self) -> None:
        self.started, self.started_cpu = time.perf_counter(), time.process_time()
        self.notify("measuring")

    def close(self) -> None:
        if self.measuring:
            self.ended, self.ended_cpu = time.perf_counter(), time.process_time()
            self.notify("measured")

    def holds(self, outcome: Outcome) -> bool:
        return self.started <= outcome.done and not outcome.done > self.ended


def run_spec(spec: LoadSpec, notify: Callable[[str], None] = lambda _: None) -> LoadRun:
    """Run one load spec to completion in this process; `notify` hears "measuring" and "measured" as its
    measured window opens and closes (_Window)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_run(spec, _Window(notify)))


async def _run(spec: LoadSpec, window: _Window) -> LoadRun:
    connector = aiohttp.TCPConnector(limit=_CONNECTIONS, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=spec.target.timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",), auto_decompress=False
    ) as session:
        if not (isinstance(spec, ClosedLoop) and spec.warmup_s > 0):
            window.open()
        if isinstance(spec, Sequential):
            outcomes, lag = await _sequential(session, spec), 0.0
        elif isinstance(spec, ClosedLoop):
            outcomes, lag = await _warmed_closed_loop(session, spec, window), 0.0
        else:
            outcomes, lag = await _open_loop(session, spec)
        window.close()
        return LoadRun(
            outcomes=outcomes,
            started=window.started,
            finished=window.ended,
            client_cpu_s=window.ended_cpu - window.started_cpu,
            max_lag_ms=lag * 1000,
        )


async def _post(session: aiohttp.ClientSession, target: Target, payload: bytes, due: float) -> Outcome:
    sent = time.perf_counter()
    try:
        headers = {**_HEADERS, **dict(target.headers)}
        async with session.post(target.url, data=payload, headers=headers) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        return Outcome(due=due, sent=sent, done=time.perf_counter(), status=0)
    done = time.perf_counter()
    if status != 200:
        return Outcome(due=due, sent=sent, done=done, status=status)
    return answered(body, due=due, sent=sent, done=done)


def answered(body: bytes, *, due: float, sent: float, done: float) -> Outcome:
    """The outcome of a 200, with what its JSON body says about the request."""
    answer: dict[str, Any] = json.loads(body)
    return Outcome(
        due=due,
        sent=sent,
        done=done,
        status=200,
        api_latency_ms=float(answer["latency_ms"]),
        inference_ms=float(answer["inference_ms"]),
        words=len(str(answer.get("title", "")).split()),
        worker_id=str(answer["worker_id"]) if "worker_id" in answer else None,
        cached=answer.get("cached") is True,
    )


async def _sequential(session: aiohttp.ClientSession, spec: Sequential) -> list[Outcome]:
    payloads = spec.target.payloads
    outcomes = []
    for index in range(spec.count):
        now = time.perf_counter()
        outcomes.append(await _post(session, spec.target, payloads[index % len(payloads)], now))
    return outcomes


async def _warmed_closed_loop(
    session: aiohttp.ClientSession, spec: ClosedLoop, window: _Window
) -> list[Outcome]:
    """The closed loop, its window opened after its warm-up (if any) and closed as it has enough."""

    async def warm_up() -> None:
        await asyncio.sleep(spec.warmup_s)
        window.open()

    warming = asyncio.create_task(warm_up()) if spec.warmup_s > 0 else None
    loop = _mixed_closed_loop if spec.target.fresh_every else _closed_loop
    try:
        return await loop(session, spec, window)
    finally:
        if warming is not None:
            warming.cancel()


def _enough(spec: ClosedLoop, window: _Window, outcomes: list[Outcome]) -> bool:
    """Past max_s, or past min_s with min_completions answered, counted in the measured window, which
    closes here; False while a warm-up runs."""
    if window.measuring:
        elapsed = time.perf_counter() - window.started
        if elapsed >= spec.max_s or (
            elapsed >= spec.min_s and sum(map(window.holds, outcomes)) >= spec.min_completions
        ):
            window.close()
    return math.isfinite(window.ended)


async def _closed_loop(session: aiohttp.ClientSession, spec: ClosedLoop, window: _Window) -> list[Outcome]:
    payloads, outcomes = spec.target.payloads, list[Outcome]()
    stop = asyncio.Event()

    async def caller(first: int) -> None:
        index = first
        while not stop.is_set():
            now = time.perf_counter()
            outcomes.append(await _post(session, spec.target, payloads[index % len(payloads)], now))
            index += spec.concurrency
            if _enough(spec, window, outcomes):
                stop.set()

    await asyncio.gather(*(caller(first) for first in range(spec.concurrency)))
    return outcomes


async def _mixed_closed_loop(
    session: aiohttp.ClientSession, spec: ClosedLoop, window: _Window
) -> list[Outcome]:
    """As _closed_loop, but requests take payloads by one sequence across callers, so that exactly every
    fresh_every-th request sent is an image never sent before, whichever callers are fast."""
    payloads, every, outcomes = spec.target.payloads, spec.target.fresh_every, list[Outcome]()
    sequence, run_tag = itertools.count(), os.urandom(8).hex().encode()

    def payload(index: int) -> bytes:
        picture = payloads[index % len(payloads)]
        return unique_jpeg(picture, b"%s-%d" % (run_tag, index)) if index % every == 0 else picture

    async def caller() -> None:
        while not _enough(spec, window, outcomes):
            outcomes.append(await _post(session, spec.target, payload(next(sequence)), time.perf_counter()))

    await asyncio.gather(*(caller() for _ in range(spec.concurrency)))
    return outcomes


def arrival_offsets(rate: float, duration_s: float, *, poisson: bool, seed: int) -> list[float]:
    """Send times (seconds from the start) of an open-loop run."""
    if not poisson:
        return [index / rate for index in range(round(rate * duration_s))]
    rng = random.Random(seed)
    offsets: list[float] = []
    now = rng.expovariate(rate)
    while now < duration_s:
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


async def _open_loop(session: aiohttp.ClientSession, spec: OpenLoop) -> tuple[list[Outcome], float]:
    payloads = spec.target.payloads
    offsets = arrival_offsets(spec.rate, spec.duration_s, poisson=spec.poisson, seed=spec.seed)
    start, lag = time.perf_counter() + 0.05, 0.0
    tasks = []
    for index, offset in enumerate(offsets):
        due = start + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag = max(lag, -delay)
        payload = payloads[index % len(payloads)]
        tasks.append(asyncio.create_task(_post(session, spec.target, payload, due)))
    return list(await asyncio.gather(*tasks)), lag


# ---- the harness side -----------------------------------------------------------------------------------


def _serve(connection: Connection) -> None:
    """Client process main loop: run each spec received, send ("measuring", None) and ("measured", None) as
    its measured window opens and closes, then ("ok", LoadRun) or ("error", text). Ctrl-C is the
    harness's to handle: it stops this process when it unwinds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while (spec := connection.recv()) is not None:
        try:
            connection.send(("ok", run_spec(spec, lambda event: connection.send((event, None)))))
        except Exception:
            connection.send(("error", traceback.format_exc()))


class LoadClient:
    """A load-generator process kept for the whole benchmark (spawned: no fork of torch state)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="bench-load-client", daemon=True)
        self._process.start()
        child.close()

    def run(
        self,
        spec: LoadSpec,
        *,
        on_measuring: Callable[[], None] = lambda: None,
        on_measured: Callable[[], None] = lambda: None,
    ) -> LoadRun:
        """Run `spec` in the client process; on_measuring and on_measured are called as its measured window
        opens and closes (LoadRun.started, .finished). A callback's exception is raised once the run's
        result is read, so the next run starts on a clean pipe."""
        events = {"measuring": on_measuring, "measured": on_measured}
        failure: Exception | None = None
        try:
            self._connection.send(spec)
            while (message := cast(tuple[str, Any], self._connection.recv()))[0] in events:
                try:
                    if failure is None:
                        events[message[0]]()
                except Exception as exc:
                    failure = exc
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"the load client process died (exit code {self._process.exitcode})") from exc
        if failure is not None:
            raise failure
        kind, result = message
        if kind != "ok":
            raise RuntimeError(f"load client failed:\n{result}")
        return cast(LoadRun, result)

    def close(self) -> None:
        if self._process.is_alive():
            with suppress(OSError):
                self._connection.send(None)
            self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._connection.close()


@contextmanager
def load_client() -> Iterator[LoadClient]:
    client = LoadClient()
    try:
        yield client
    finally:
        client.close()
