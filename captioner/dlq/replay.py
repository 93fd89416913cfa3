"""Re-publishes dead letters to their original topic, if it is one of the service's own, and commits each
one only once Kafka acknowledged it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from opentelemetry.trace import Span

from captioner.dlq.errors import UntrustedTargetError
from captioner.dlq.filters import DeadLetterFilter
from captioner.dlq.ledger import ReplayLedger
from captioner.dlq.reader import require_topic
from captioner.dlq.records import TOPIC_NAME, DeadLetter
from captioner.dlq.tracing import end_replay_span, start_replay_span
from captioner.errors import ExitCode, OperatorError, UsageError
from core.offsets import OffsetTracker
from core.settings import TopicSettings
from schemas import headers as names

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Pacer:
    """Spaces sends to at most `rate_per_s`; while waiting it calls `idle(seconds)` (the producer's poll)."""

    def __init__(self, rate_per_s: float | None, *, clock: Clock = time.monotonic) -> None:
        self._interval = 1 / rate_per_s if rate_per_s else 0.0
        self._clock = clock
        self._next = 0.0

    def wait(self, idle: Callable[[float], Any], stop: threading.Event) -> None:
        if not self._interval:
            return
        self._next = max(self._next, self._clock())
        while (delay := self._next - self._clock()) > 0 and not stop.is_set():
            idle(min(delay, 0.1))
        self._next += self._interval


def check_topic_name(name: str | None) -> str | None:
    if name is not None and not TOPIC_NAME.fullmatch(name):
        raise UsageError(f"--to {name!r} is not a topic name")
    return name


class TargetTopics:
    """Where each record goes back to, each target checked once to exist.

    The original-topic header is hostile input, so it is followed only to the service's own topics: the
    request topic and the retry tiers. A record without one (or with one that is no topic name) goes to
    the request topic, the entry point every record first came in by. One naming any other topic is not
    replayed (UntrustedTargetError) unless the operator names the target: `override` (--to) is used for
    every record, whatever its headers."""

    def __init__(
        self,
        client: Any,
        *,
        requests: str,
        retries: Iterable[str] = (),
        override: str | None = None,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._requests = requests
        self._trusted = frozenset({requests, *retries})
        self._override = override
        self._timeout_s = timeout_s
        self._known: set[str] = set()

    @classmethod
    def of_service(
        cls, client: Any, topics: TopicSettings, *, override: str | None, timeout_s: float
    ) -> TargetTopics:
        return cls(
            client,
            requests=topics.requests,
            retries=topics.retry_topics,
            override=override,
            timeout_s=timeout_s,
        )

    def of(self, record: DeadLetter) -> str:
        topic = self._override or self._trusted_origin(record)
        if topic not in self._known:
            require_topic(self._client, topic, timeout_s=self._timeout_s)
            self._known.add(topic)
        return topic

    def _trusted_origin(self, record: DeadLetter) -> str:
        origin = record.original_topic
        if origin is None:
            return self._requests
        if origin not in self._trusted:
            raise UntrustedTargetError(
                f"not replayed: its {names.ORIGINAL_TOPIC} header names {origin!r}, not one of this "
                f"service's topics; name the target with --to to replay it"
            )
        return origin


@dataclass
class ReplayCounts:
    scanned: int = 0
    replayed: int = 0  # re-published and acknowledged
    would_replay: int = 0  # --dry-run
    not_selected: int = 0
    already_replayed: int = 0
    failed: int = 0  # not acknowledged by Kafka, or refused: its original topic is not the service's own
    held_back: int = 0  # after a failure in their partition, so the commit can stay behind the failure
    unconfirmed: int = 0  # sent, but no acknowledgement before the end: may have been published


@dataclass(frozen=True)
class PlannedReplay:
    position: str
    correlation_id: str | None
    error_class: str
    target: str


@dataclass
class ReplaySummary:
    topic: str
    group: str
    selection: str
    dry_run: bool
    to: str | None = None  # --to: the one target of every record
    counts: ReplayCounts = field(default_factory=ReplayCounts)
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)
    planned: list[PlannedReplay] = field(default_factory=list)  # --dry-run: what a replay would send

    @property
    def exit_code(self) -> ExitCode:
        counts = self.counts
        if counts.failed or counts.held_back or counts.unconfirmed or self.errors:
            return ExitCode.FAILURES
        return ExitCode.INTERRUPTED if self.interrupted else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"exit_code": int(self.exit_code)}


class Replayer:
    """One pass over the records read for a group; `commit(positions)` records its progress."""

    def __init__(
        self,
        *,
        summary: ReplaySummary,
        producer: Any,
        commit: Callable[[dict[int, int]], None],
        selection: DeadLetterFilter,
        ledger: ReplayLedger,
        targets: TargetTopics,
        pacer: Pacer,
        stop: threading.Event,
        commit_interval_s: float = 1.0,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self.summary = summary
        self._producer = producer
        self._commit = commit
        self._selection = selection
        self._ledger = ledger
        self._targets = targets
        self._pacer = pacer
        self._stop = stop
        self._commit_interval_s = commit_interval_s
        self._flush_timeout_s = flush_timeout_s
        self._tracker = OffsetTracker()
        self._positions: dict[int, int] = {}
        self._failed_partitions: set[int] = set()
        self._next_commit = time.monotonic() + commit_interval_s

    def run(self, records: Iterable[DeadLetter], on_record: Callable[[ReplayCounts], Any]) -> ReplaySummary:
        try:
            for record in records:
                self._handle(record)
                on_record(self.summary.counts)
                if self._stop.is_set():
                    break
                self._commit_if_due()
        finally:
            self.summary.interrupted = self._stop.is_set()
            self._finish()
        return self.summary

    def _handle(self, record: DeadLetter) -> None:
        counts = self.summary.counts
        counts.scanned += 1
        self._tracker.track(record.topic, record.partition, record.offset)
        if not self._selection.matches(record):
            counts.not_selected += 1
        elif self._ledger.replayed_by(record) is not None:
            counts.already_replayed += 1
        elif record.partition in self._failed_partitions:
            counts.held_back += 1
            return
        else:
            self._replay(record)
            return
        self._tracker.finish(record.topic, record.partition, record.offset)

    def _replay(self, record: DeadLetter) -> None:
        """A refused record counts as failed, like one Kafka refused: left uncommitted, it holds its
        partition back, so a rerun with --to can still replay it (the ledger would count a record
        committed past as replayed)."""
        try:
            target = self._targets.of(record)
        except UntrustedTargetError as exc:
            self._fail(record, str(exc))
            return
        if self.summary.dry_run:
            self.summary.counts.would_replay += 1
            self.summary.planned.append(
                PlannedReplay(record.position, record.correlation_id, record.error_class, target)
            )
        else:
            self._send(record, target)

    def _send(self, record: DeadLetter, target: str) -> None:
        self._pacer.wait(self._producer.poll, self._stop)
        span, headers = start_replay_span(record, target)
        while True:
            try:
                self._producer.produce(
                    target,
                    key=record.key,
                    value=record.value,
                    headers=headers,
                    on_delivery=partial(self._delivered, record, span),
                )
                break
            except BufferError:  # the local queue is full: serve deliveries, then try again
                self._producer.poll(0.1)
            except BaseException as exc:
                end_replay_span(span, type(exc).__name__)
                raise
        self._producer.poll(0)

    def _delivered(self, record: DeadLetter, span: Span, error: Any, _message: Any) -> None:
        end_replay_span(span, None if error is None else error.str())
        if error is None:
            self.summary.counts.replayed += 1
            self._tracker.finish(record.topic, record.partition, record.offset)
            return
        self._fail(record, error.str())

    def _fail(self, record: DeadLetter, reason: str) -> None:
        self.summary.counts.failed += 1
        self._failed_partitions.add(record.partition)
        self.summary.errors.append(f"{record.position}: {reason}")
        log.error("could not replay %s: %s", record.position, reason)

    def _commit_if_due(self) -> None:
        if time.monotonic() >= self._next_commit:
            self._commit_positions(final=False)
            self._next_commit = time.monotonic() + self._commit_interval_s

    def _commit_positions(self, *, final: bool) -> None:
        """A failed commit is retried with the next one; only the last one's failure is an error."""
        for tp in self._tracker.take_positions():
            self._positions[tp.partition] = tp.offset
        if self.summary.dry_run or not self._positions:
            return
        positions, self._positions = self._positions, {}
        try:
            self._commit(positions)
        except OperatorError as exc:
            self._positions = positions | self._positions
            if final:
                self.summary.errors.append(f"progress not recorded, a rerun may replay again: {exc}")
            log.warning("%s", exc)

    def _finish(self) -> None:
        if not self.summary.dry_run:
            self.summary.counts.unconfirmed = self._producer.flush(self._flush_timeout_s)
        self._commit_positions(final=True)
