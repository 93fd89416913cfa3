"""`captioner caption`: the options, the chosen backend, the progress bar and the closing report."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import TextIO

import aiohttp
from confluent_kafka import KafkaException
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgressBar
from rich.text import Text

from captioner.bulk.http import Backoff, HttpBackend
from captioner.bulk.kafka import KafkaBackend
from captioner.bulk.options import CaptionOptions, Via
from captioner.bulk.paths import count_paths, input_paths, uses_stdin
from captioner.bulk.results import Result
from captioner.bulk.run import Backend, NoProgress, Progress, Summary, caption_all
from captioner.bulk.sinks import ResultSink, make_sink, open_output
from captioner.bulk.window import AdaptiveWindow
from captioner.errors import ExitCode, UsageError
from core.errors import KafkaTimeoutError
from core.settings import KafkaSettings, TopicSettings
from core.topics import OUTCOME_HEADROOM_BYTES
from schemas.framing import SINGLE_OBJECT_CODECS, RecordCodecs


def caption(
    options: CaptionOptions,
    *,
    kafka: KafkaSettings | None,
    topics: TopicSettings,
    codecs: RecordCodecs = SINGLE_OBJECT_CODECS,
) -> int:
    """Runs the whole command; returns its exit code. Results go to the output as they arrive; the
    failures and a summary go to stderr at the end. `kafka` and `codecs` (the record framings) are used
    --via kafka only."""
    stream, sink, skip = _open(options)
    try:
        summary = asyncio.run(_run(options, sink, skip, kafka=kafka, topics=topics, codecs=codecs))
    except (KafkaException, KafkaTimeoutError) as exc:
        print(f"captioner caption: Kafka is unreachable or refused the reply topic: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    finally:
        if stream is not sys.stdout:
            stream.close()
    report(summary, sys.stderr)
    return ExitCode.FAILURES if summary.failed else ExitCode.OK


def _open(options: CaptionOptions) -> tuple[TextIO, ResultSink, frozenset[str]]:
    if options.output is None:
        return sys.stdout, make_sink(sys.stdout, options.format), frozenset()
    return open_output(options.output, options.format, resume=options.resume)


async def _run(
    options: CaptionOptions,
    sink: ResultSink,
    skip: frozenset[str],
    *,
    kafka: KafkaSettings | None,
    topics: TopicSettings,
    codecs: RecordCodecs,
) -> Summary:
    paths = input_paths(options.sources, recursive=options.recursive, stdin=sys.stdin)
    # The request topic takes records up to its limit; a file bigger than that could never be sent.
    max_bytes = topics.max_message_bytes - OUTCOME_HEADROOM_BYTES
    async with _backend(options, kafka=kafka, topics=topics, codecs=codecs) as backend:
        with _progress_bar(options.show_progress) as progress:
            counting = asyncio.create_task(_count_total(options, skip, progress))
            try:
                return await caption_all(
                    paths,
                    backend=backend,
                    sink=sink,
                    concurrency=options.concurrency,
                    max_bytes=max_bytes,
                    skip=skip,
                    progress=progress,
                    window=_window(options),
                )
            finally:
                counting.cancel()


def _window(options: CaptionOptions) -> AdaptiveWindow | None:
    """Through Kafka nothing pushes back, so the run adapts its window; the API answers 429/503 itself."""
    if options.via is not Via.kafka:
        return None
    return AdaptiveWindow.for_deadline(max_size=options.concurrency, deadline_s=options.timeout_s)


async def _count_total(options: CaptionOptions, skip: frozenset[str], progress: Progress) -> None:
    """The bar's total (so it can show an ETA), counted beside the run; paths from stdin cannot be."""
    if uses_stdin(options.sources):
        return
    total = await asyncio.to_thread(count_paths, options.sources, recursive=options.recursive, skip=skip)
    progress.set_total(total)


@asynccontextmanager
async def _backend(
    options: CaptionOptions, *, kafka: KafkaSettings | None, topics: TopicSettings, codecs: RecordCodecs
) -> AsyncIterator[Backend]:
    if options.via is Via.kafka:
        if kafka is None:
            raise UsageError("--via kafka needs the Kafka settings")
        async with KafkaBackend(kafka, topics, timeout_s=options.timeout_s, codecs=codecs) as backend:
            yield backend
        return
    connector = aiohttp.TCPConnector(limit=options.concurrency)
    timeout = aiohttp.ClientTimeout(total=options.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield HttpBackend(session, api_url=options.api_url, backoff=Backoff(attempts=options.attempts))


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "- img/s")


class RichProgress:
    """The bar on stderr: done/total, rate, ETA, elapsed and failures so far."""

    def __init__(self) -> None:
        self._bar = RichProgressBar(
            TextColumn("captioning"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[failed]} failed"),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._bar.add_task("captioning", total=None, failed=0)
        self._failed = 0

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._bar.stop()

    def set_total(self, total: int) -> None:
        self._bar.update(self._task, total=total)

    def advance(self, result: Result) -> None:
        self._failed += not result.ok
        self._bar.update(self._task, advance=1, failed=self._failed)


def _progress_bar(show: bool) -> AbstractContextManager[Progress]:
    return RichProgress() if show else nullcontext(NoProgress())


def report(summary: Summary, err: TextIO) -> None:
    """The failures (so they need not be dug out of the output), then one line of totals."""
    if summary.failures:
        print(f"failed ({summary.failed}):", file=err)
        for failure in summary.failures:
            print(f"  {failure.path}: {failure.error}: {failure.message}", file=err)
        if summary.failed > len(summary.failures):
            print(f"  ... and {summary.failed - len(summary.failures)} more (see the output)", file=err)
    skipped = f", {summary.skipped} skipped (already in the output)" if summary.skipped else ""
    print(
        f"{summary.captioned} captioned, {summary.failed} failed{skipped} "
        f"in {summary.elapsed_s:.1f} s ({summary.rate:.1f} images/s)",
        file=err,
    )
