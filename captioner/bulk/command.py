"""`captioner caption`: the options, the chosen backend, the progress bar and the closing report."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
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
from captioner.bulk.results import PathKey, Result
from captioner.bulk.run import Backend, NoProgress, Progress, Summary, caption_all
from captioner.bulk.sinks import ResultSink, make_sink, open_output
from captioner.bulk.window import AdaptiveWindow
from captioner.errors import ExitCode, UsageError
from core.errors import KafkaTimeoutError
from core.settings import KafkaSettings, TopicSettings
from core.text import escaped
from core.topics import OUTCOME_HEADROOM_BYTES, TopicNotAuthorizedError, TopicsMissingError
from schemas.framing import SINGLE_OBJECT_CODECS, RecordCodecs

log = logging.getLogger(__name__)


def caption(
    options: CaptionOptions,
    *,
    kafka: KafkaSettings | None,
    topics: TopicSettings,
    codecs: RecordCodecs = SINGLE_OBJECT_CODECS,
) -> int:
    """Runs the whole command; returns its exit code. Results go to the output as they arrive; the
    failures and a summary go to stderr at the end, also when the run is stopped early (Ctrl-C, SIGTERM,
    an error), with the jobs it left in flight. `kafka` and `codecs` (the record framings) are used --via
    kafka only."""
    summary = Summary()
    try:
        with _output(options) as (sink, skip):
            asyncio.run(_run(options, sink, skip, summary, kafka=kafka, topics=topics, codecs=codecs))
    except UsageError as exc:
        print(f"captioner caption: {escaped(exc.message)}", file=sys.stderr)
        return ExitCode.USAGE
    except (KafkaException, KafkaTimeoutError, TopicNotAuthorizedError, TopicsMissingError) as exc:
        print(
            f"captioner caption: Kafka is unreachable or refused the reply topic: {escaped(str(exc))}",
            file=sys.stderr,
        )
        return ExitCode.UNAVAILABLE
    except (KeyboardInterrupt, asyncio.CancelledError):
        report(summary, sys.stderr, stopped="interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        log.info("the run stopped on an error", exc_info=exc)  # -v shows where
        report(summary, sys.stderr, stopped=_first_error(exc))
        return ExitCode.FAILURES
    report(summary, sys.stderr)
    return ExitCode.FAILURES if summary.failed else ExitCode.OK


def _first_error(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):  # a slot's error, raised through the run's task group
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _output(options: CaptionOptions) -> Iterator[tuple[ResultSink, frozenset[PathKey]]]:
    if options.output is not None:
        stream, sink, skip = open_output(options.output, options.format, resume=options.resume)
        with stream:
            yield sink, skip
        return
    # JSON lines and CSV are UTF-8 whatever the locale says stdout is; what the sinks write is always
    # valid UTF-8, so a strict stream never refuses a row mid-run.
    terminal = sys.stdout.isatty()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # stdout replaced by a text-only stream
        yield make_sink(sys.stdout, options.format, terminal=terminal), frozenset()
        return
    sys.stdout.flush()
    stream = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    try:
        yield make_sink(stream, options.format, terminal=terminal), frozenset()
    finally:
        stream.flush()
        stream.detach()  # sys.stdout stays usable, its buffer open


async def _run(
    options: CaptionOptions,
    sink: ResultSink,
    skip: frozenset[PathKey],
    summary: Summary,
    *,
    kafka: KafkaSettings | None,
    topics: TopicSettings,
    codecs: RecordCodecs,
) -> None:
    _stop_on_sigterm()
    paths = input_paths(
        options.sources,
        recursive=options.recursive,
        stdin=sys.stdin.buffer if uses_stdin(options.sources) else io.BytesIO(),
        follow_symlinks=options.follow_symlinks,
    )
    # The request topic takes records up to its limit; a file bigger than that could never be sent.
    max_bytes = topics.max_message_bytes - OUTCOME_HEADROOM_BYTES
    async with _backend(options, summary, kafka=kafka, topics=topics, codecs=codecs) as backend:
        with _progress_bar(options.show_progress) as progress:
            stop_counting = threading.Event()
            counting = asyncio.create_task(_count_total(options, skip, progress, stop_counting))
            try:
                await caption_all(
                    paths,
                    backend=backend,
                    sink=sink,
                    concurrency=options.concurrency,
                    max_bytes=max_bytes,
                    skip=skip,
                    progress=progress,
                    window=_window(options),
                    summary=summary,
                )
            finally:
                stop_counting.set()
                counting.cancel()


def _stop_on_sigterm() -> None:
    """SIGTERM stops the run as Ctrl-C does: the backend closes (the reply topic goes) and the report
    is printed."""
    task = asyncio.current_task()
    if task is not None and threading.current_thread() is threading.main_thread():
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def _window(options: CaptionOptions) -> AdaptiveWindow | None:
    """Through Kafka nothing pushes back, so the run adapts its window; the API answers 429/503 itself."""
    if options.via is not Via.kafka:
        return None
    return AdaptiveWindow.for_deadline(max_size=options.concurrency, deadline_s=options.timeout_s)


async def _count_total(
    options: CaptionOptions, skip: frozenset[PathKey], progress: Progress, stop: threading.Event
) -> None:
    """The bar's total (so it can show an ETA), counted beside the run; paths from stdin cannot be."""
    if uses_stdin(options.sources):
        return
    total = await asyncio.to_thread(
        count_paths,
        options.sources,
        recursive=options.recursive,
        skip=skip,
        follow_symlinks=options.follow_symlinks,
        stop=stop,
    )
    progress.set_total(total)


@asynccontextmanager
async def _backend(
    options: CaptionOptions,
    summary: Summary,
    *,
    kafka: KafkaSettings | None,
    topics: TopicSettings,
    codecs: RecordCodecs,
) -> AsyncIterator[Backend]:
    if options.via is Via.kafka:
        if kafka is None:
            raise UsageError("--via kafka needs the Kafka settings")
        backend = KafkaBackend(kafka, topics, timeout_s=options.timeout_s, codecs=codecs)
        try:
            async with backend:
                yield backend
        finally:
            summary.left_in_flight = backend.left_in_flight
        return
    connector = aiohttp.TCPConnector(limit=options.concurrency)
    timeout = aiohttp.ClientTimeout(total=options.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield HttpBackend(
            session,
            api_url=options.api_url,
            backoff=Backoff(attempts=options.attempts),
            api_key=options.api_key,
        )


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


def report(summary: Summary, err: TextIO, *, stopped: str | None = None) -> None:
    """The failures (so they need not be dug out of the output), then one line of totals; for a run
    stopped early, why, and the jobs it left in flight. Everything from outside is shown escaped."""
    if summary.failures:
        print(f"failed ({summary.failed}):", file=err)
        for failure in summary.failures:
            line = f"{failure.path}: {failure.error}: {failure.message}"
            print(f"  {escaped(line)}", file=err)
        if summary.failed > len(summary.failures):
            print(f"  ... and {summary.failed - len(summary.failures)} more (see the output)", file=err)
    skipped = f", {summary.skipped} skipped (already in the output)" if summary.skipped else ""
    print(
        f"{summary.captioned} captioned, {summary.failed} failed{skipped} "
        f"in {summary.elapsed_s:.1f} s ({summary.rate:.1f} images/s)",
        file=err,
    )
    if stopped is not None:
        print(f"stopped early ({escaped(stopped)}); with --output, --resume goes on from there", file=err)
    if summary.left_in_flight:
        print(
            f"{summary.left_in_flight} images were still in flight on the request topic: workers may "
            "still caption them, but their replies are lost with this run's reply topic (--resume "
            "sends them again)",
            file=err,
        )
