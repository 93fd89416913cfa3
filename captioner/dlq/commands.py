"""`captioner dlq list|show|replay`. Exit codes: see `captioner.errors.ExitCode`."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

import typer
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from captioner.dlq import render
from captioner.dlq.errors import RecordNotFoundError
from captioner.dlq.filters import DeadLetterFilter, parse_time
from captioner.dlq.ledger import DEFAULT_NAMESPACE, commit_metadata, read_ledger, replay_group
from captioner.dlq.overview import Bucket, summarize
from captioner.dlq.reader import DeadLetterTopic, open_dead_letter_topic, plan_ranges
from captioner.dlq.records import DeadLetter
from captioner.dlq.replay import (
    Pacer,
    ReplayCounts,
    Replayer,
    ReplaySummary,
    TargetTopics,
    check_topic_name,
)
from captioner.errors import UsageError
from core.kafka_config import client_config, producer_config
from core.logs import LIBRDKAFKA_LOG, configure_tool_logging
from core.settings import KafkaSettings, RegistrySettings, TopicSettings, TracingSettings, load_settings
from core.signals import relayed_signals
from core.tracing import configure_tracing
from schemas import CaptionRequest

dlq_app = typer.Typer(
    help="The dead-letter topic: count, inspect and replay its records.\n\n"
    "Exit codes: 0 ok, 1 some records not replayed, 2 usage error, 3 Kafka unreachable or topic "
    "missing, 4 no such record (show), 130 interrupted (replay committed what was acknowledged).",
    no_args_is_help=True,
)

TopicOption = Annotated[
    str | None, typer.Option("--topic", help="Dead-letter topic (default: $CAPTIONER_TOPIC_DEAD_LETTER).")
]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for Kafka.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ErrorClassOption = Annotated[
    list[str] | None, typer.Option("--error-class", help="Only this error class (repeatable).")
]
SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="Failed at or after: ISO 8601, epoch ms, or an age (30m, 2h, 7d)."),
]
UntilOption = Annotated[str | None, typer.Option("--until", help="Failed before (same forms as --since).")]
PartitionsOption = Annotated[
    list[int] | None, typer.Option("--partition", min=0, help="Only this DLQ partition (repeatable).")
]
FromOffsetOption = Annotated[int | None, typer.Option("--from-offset", min=0, help="Lowest DLQ offset.")]
ToOffsetOption = Annotated[int | None, typer.Option("--to-offset", min=0, help="Highest DLQ offset.")]
IdsOption = Annotated[
    list[str] | None, typer.Option("--id", help="Only this correlation id (or key; repeatable).")
]


@dlq_app.callback()
def dlq_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log Kafka client details.")] = False,
) -> None:
    configure_tool_logging(verbose=verbose)


@dlq_app.command("list")
def list_dead_letters(
    error_class: ErrorClassOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    partition: PartitionsOption = None,
    from_offset: FromOffsetOption = None,
    to_offset: ToOffsetOption = None,
    id_: IdsOption = None,
    bucket: Annotated[Bucket, typer.Option("--by", help="Time bucket of the counts.")] = Bucket.hour,
    topic: TopicOption = None,
    json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Count dead letters by error class, failure time and partition.

    Reads the topic from its low to its high watermark without a consumer group: commits nothing."""
    kafka, topics = load_settings(KafkaSettings), load_settings(TopicSettings)
    selection = build_filter(error_class, since, until, partition, from_offset, to_offset, id_)
    name = topic or topics.dead_letter
    with open_dead_letter_topic(
        kafka, topics, topic=name, timeout_s=timeout, decode_request=_request_decoder()
    ) as dlq:
        records = _selected(dlq, selection)
        overview = summarize(records, topic=name, selection=selection.describe(), bucket=bucket)
    typer.echo(render.to_json(render.overview_json(overview)) if json else render.overview_text(overview))


@dlq_app.command()
def show(
    partition: Annotated[int | None, typer.Option("--partition", min=0, help="DLQ partition.")] = None,
    offset: Annotated[int | None, typer.Option("--offset", min=0, help="DLQ offset.")] = None,
    id_: Annotated[str | None, typer.Option("--id", help="Correlation id (or key).")] = None,
    topic: TopicOption = None,
    json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Print a dead letter's headers and metadata (not its image).

    Select it by --partition and --offset, or by --id (every dead letter of that correlation id; add
    --partition to read only one partition). The value is decoded as a CaptionRequest where possible."""
    kafka, topics = load_settings(KafkaSettings), load_settings(TopicSettings)
    name = topic or topics.dead_letter
    with open_dead_letter_topic(
        kafka, topics, topic=name, timeout_s=timeout, decode_request=_request_decoder()
    ) as dlq:
        records = _find(dlq, partition, offset, id_)
    if json:
        typer.echo(render.to_json({"records": [render.dead_letter_json(r) for r in records]}))
    else:
        typer.echo("\n\n".join(render.dead_letter_text(r) for r in records))


@dlq_app.command()
def replay(
    error_class: ErrorClassOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    partition: PartitionsOption = None,
    from_offset: FromOffsetOption = None,
    to_offset: ToOffsetOption = None,
    id_: IdsOption = None,
    group: Annotated[
        str,
        typer.Option(
            "--group",
            help="Replay ledger: each filter set commits its progress as group <GROUP>.<filter id>, and "
            "no record is replayed twice within one ledger, whatever the filters.",
        ),
    ] = DEFAULT_NAMESPACE,
    rate: Annotated[
        float | None, typer.Option("--rate", min=0.001, help="At most this many records per second.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be replayed.")] = False,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Send every selected record to this topic, whatever its captioner.original.topic header.",
        ),
    ] = None,
    topic: TopicOption = None,
    json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Re-publish dead letters to their original topic, if it is one of the service's own.

    The captioner.original.topic header is trusted only when it names the request topic or a retry tier;
    without one a record goes to the request topic. A record naming any other topic fails (exit 1) and
    holds its partition back until it is replayed with --to, which sends every selected record to the
    topic it names. Same key and value; well-formed original.* headers are kept, attempt and error
    headers dropped, and captioner.replayed-from is set, so the worker runs the job even past its
    deadline. Each record is replayed at most once per --group, whatever the filters of each run. Ctrl-C
    stops cleanly: only records whose re-publication Kafka acknowledged are committed."""
    kafka, topics = load_settings(KafkaSettings), load_settings(TopicSettings)
    configure_tracing(load_settings(TracingSettings), service_name="captioner-dlq")
    selection = build_filter(error_class, since, until, partition, from_offset, to_offset, id_)
    summary = ReplaySummary(
        topic=topic or topics.dead_letter,
        group=replay_group(group, selection),
        selection=selection.describe(),
        dry_run=dry_run,
        to=check_topic_name(to),
    )
    run_replay(kafka, topics, summary, selection, namespace=group, rate=rate, timeout_s=timeout)
    typer.echo(render.to_json(summary.to_json()) if json else render.replay_text(summary))
    raise typer.Exit(summary.exit_code)


def run_replay(
    kafka: KafkaSettings,
    topics: TopicSettings,
    summary: ReplaySummary,
    selection: DeadLetterFilter,
    *,
    namespace: str,
    rate: float | None,
    timeout_s: float,
) -> None:
    metadata = commit_metadata(selection)
    admin = AdminClient(client_config(kafka, client_id="captioner-dlq") | {"logger": LIBRDKAFKA_LOG})
    producer_settings = producer_config(kafka, topics, client_id="captioner-dlq-replay")
    producer = Producer(producer_settings | {"logger": LIBRDKAFKA_LOG})
    stop = threading.Event()
    with (
        open_dead_letter_topic(
            kafka,
            topics,
            topic=summary.topic,
            timeout_s=timeout_s,
            group_id=summary.group,
            decode_request=_request_decoder(),
        ) as dlq,
        stop_on_signals(stop),
    ):
        watermarks = dlq.watermarks()
        ranges = plan_ranges(watermarks, selection, dlq.committed(list(watermarks)))
        replayer = Replayer(
            summary=summary,
            producer=producer,
            commit=partial(dlq.commit, metadata=metadata),
            selection=selection,
            ledger=read_ledger(admin, namespace=namespace, topic=summary.topic, timeout_s=timeout_s),
            targets=TargetTopics.of_service(producer, topics, override=summary.to, timeout_s=timeout_s),
            pacer=Pacer(rate),
            stop=stop,
        )
        total = sum(end - start for start, end in ranges.values())
        with (
            progress_bar(total, enabled=sys.stderr.isatty()) as on_record,
            closing(dlq.read(ranges, stop=stop)) as records,
        ):
            replayer.run(records, on_record=on_record)


def _request_decoder() -> Callable[[bytes], CaptionRequest]:
    """Dead letters are requests in either framing; the registry's is read where one is configured."""
    from core.schema_registry import record_codecs

    return record_codecs(load_settings(RegistrySettings)).requests.decode


def build_filter(
    error_classes: list[str] | None,
    since: str | None,
    until: str | None,
    partitions: list[int] | None,
    from_offset: int | None,
    to_offset: int | None,
    ids: list[str] | None,
) -> DeadLetterFilter:
    now = datetime.now(UTC)
    return DeadLetterFilter(
        error_classes=frozenset(error_classes or ()),
        failed_from_ms=parse_time(since, now=now) if since else None,
        failed_to_ms=parse_time(until, now=now) if until else None,
        partitions=frozenset(partitions or ()),
        from_offset=from_offset,
        to_offset=to_offset,
        ids=frozenset(ids or ()),
    )


def _selected(dlq: DeadLetterTopic, selection: DeadLetterFilter) -> Iterator[DeadLetter]:
    ranges = plan_ranges(dlq.watermarks(), selection)
    return (record for record in dlq.read(ranges) if selection.matches(record))


def _find(
    dlq: DeadLetterTopic, partition: int | None, offset: int | None, id_: str | None
) -> list[DeadLetter]:
    if offset is not None and (partition is None or id_ is not None):
        raise UsageError("give --partition with --offset, or --id")
    if offset is not None and partition is not None:
        record = dlq.read_at(partition, offset)
        if record is None:
            raise RecordNotFoundError(f"no dead letter at {dlq.name}[{partition}]@{offset}")
        return [record]
    if id_ is None:
        raise UsageError("give --partition and --offset, or --id")
    partitions = frozenset() if partition is None else frozenset({partition})
    selection = DeadLetterFilter(ids=frozenset({id_}), partitions=partitions)
    found = list(_selected(dlq, selection))
    if not found:
        raise RecordNotFoundError(f"no dead letter with id {id_!r} in {dlq.name}")
    return found


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """The first SIGINT/SIGTERM asks for a clean stop; a second one interrupts at once."""

    def on_signal(_signum: int) -> None:
        stop.set()
        typer.echo("stopping: waiting for records already sent, then committing", err=True)

    with relayed_signals(on_signal, interrupt_on_repeat=True):
        yield


@contextmanager
def progress_bar(total: int, *, enabled: bool) -> Iterator[Callable[[ReplayCounts], Any]]:
    """A rich progress bar on stderr, over the offsets to read; `on_record` advances it by one."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as progress:
        task = progress.add_task("reading", total=total)

        def on_record(counts: ReplayCounts) -> None:
            done = counts.replayed + counts.would_replay
            progress.update(task, advance=1, description=f"replayed {done}, failed {counts.failed}")

        yield on_record
