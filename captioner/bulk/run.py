"""The run: paths are pulled one at a time by `concurrency` slots; each slot reads its image, captions it
through the backend and writes the result, so at most `concurrency` images are held at once and each
result is on disk as soon as it is known."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from captioner.bulk.files import ImageFile, read_image
from captioner.bulk.paths import InputPath
from captioner.bulk.results import TIMEOUT, PathKey, Result, path_key
from captioner.bulk.sinks import ResultSink
from captioner.bulk.window import AdaptiveWindow

# Failures kept for the list printed at the end; the output has every one of them.
MAX_LISTED_FAILURES = 200


class Backend(Protocol):
    async def caption(self, image: ImageFile) -> Result: ...


class Progress(Protocol):
    def set_total(self, total: int) -> None: ...

    def advance(self, result: Result) -> None: ...


class NoProgress:
    def set_total(self, total: int) -> None:
        pass

    def advance(self, result: Result) -> None:
        pass


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    failures: list[Result] = field(default_factory=list)
    # Jobs sent and not answered when the run stopped early (--via kafka: they stay on the request topic).
    left_in_flight: int = 0

    def add(self, result: Result) -> None:
        if result.ok:
            self.captioned += 1
            return
        self.failed += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(result)

    @property
    def rate(self) -> float:
        done = self.captioned + self.failed
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _PathSource:
    """Hands out the next path not to skip. The listing blocks (folders, stdin), so it runs in a thread;
    one slot at a time, since a generator cannot be resumed from two threads at once."""

    def __init__(self, paths: Iterator[InputPath], skip: frozenset[PathKey], summary: Summary) -> None:
        self._paths = paths
        self._skip = skip
        self._summary = summary
        self._lock = asyncio.Lock()

    async def next(self) -> InputPath | None:
        async with self._lock:
            return await asyncio.to_thread(self._next_unskipped)

    def _next_unskipped(self) -> InputPath | None:
        for path in self._paths:
            if path_key(path.path) not in self._skip:
                return path
            self._summary.skipped += 1
        return None


async def caption_all(
    paths: Iterator[InputPath],
    *,
    backend: Backend,
    sink: ResultSink,
    concurrency: int,
    max_bytes: int,
    skip: frozenset[PathKey] = frozenset(),
    progress: Progress | None = None,
    window: AdaptiveWindow | None = None,
    summary: Summary | None = None,
) -> Summary:
    """`window`, when given, bounds the images in the backend below `concurrency` (which then bounds
    only the images read and waiting for room). `summary`, when given, is kept up to date as results
    arrive, so a caller still has the counts when the run is stopped."""
    summary = summary if summary is not None else Summary()
    source = _PathSource(paths, skip, summary)
    shown = progress or NoProgress()
    loop = asyncio.get_running_loop()
    # One writer thread: results are written one whole line at a time, in the order they are finished.
    with _timed(summary), ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk-writer") as writer:

        async def slot() -> None:
            while (found := await source.next()) is not None:
                loaded = await asyncio.to_thread(
                    read_image, found.path, max_bytes=max_bytes, within=found.within
                )
                result = loaded if isinstance(loaded, Result) else await _caption(backend, loaded, window)
                await loop.run_in_executor(writer, sink.write, result)
                summary.add(result)
                shown.advance(result)

        async with asyncio.TaskGroup() as slots:
            for _ in range(concurrency):
                slots.create_task(slot())
    return summary


@contextmanager
def _timed(summary: Summary) -> Iterator[None]:
    """The run's time, even when it is stopped."""
    started = time.monotonic()
    try:
        yield
    finally:
        summary.elapsed_s = time.monotonic() - started


async def _caption(backend: Backend, image: ImageFile, window: AdaptiveWindow | None) -> Result:
    if window is None:
        return await backend.caption(image)
    async with window.slot() as observe:
        sent = time.monotonic()
        result = await backend.caption(image)
        observe(time.monotonic() - sent, result.error == TIMEOUT)
    return result
