"""`captioner dlq` without a broker: records and headers, filters, the replay ledger, the replayer."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from typer.testing import CliRunner

from captioner.cli import app
from captioner.dlq import render
from captioner.dlq.filters import DeadLetterFilter, parse_time
from captioner.dlq.ledger import (
    ReplayedRange,
    ReplayLedger,
    commit_metadata,
    filter_of_metadata,
    replay_group,
)
from captioner.dlq.overview import Bucket, summarize
from captioner.dlq.reader import plan_ranges
from captioner.dlq.records import DeadLetter, header_pairs
from captioner.dlq.replay import Pacer, PlannedReplay, Replayer, ReplaySummary, TargetTopics, check_topic_name
from captioner.errors import ExitCode, UsageError
from schemas import REQUEST_CODEC, CaptionRequest
from schemas import headers as names
from tests.support.tracing import recorded_spans

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def request_bytes(correlation_id: str) -> bytes:
    return REQUEST_CODEC.encode(
        CaptionRequest(
            correlation_id=correlation_id,
            image=b"\x89PNG" + b"\0" * 96,
            content_type="image/png",
            reply_topic="callers.replies",
            deadline=NOW + timedelta(seconds=5),
            created_at=NOW,
        )
    )


def dead_letter(
    *,
    partition: int = 0,
    offset: int = 0,
    error_class: str = "ImageTooLargeError",
    failed_at_ms: int | None = NOW_MS,
    correlation_id: str = "cid-1",
    value: bytes | None = None,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> DeadLetter:
    headers: list[tuple[str, bytes]] = [
        (names.ORIGINAL_TOPIC, b"app.requests"),
        (names.ORIGINAL_PARTITION, b"3"),
        (names.ORIGINAL_OFFSET, b"41"),
        (names.ORIGINAL_TIMESTAMP_MS, str(NOW_MS - 1000).encode()),
        (names.ATTEMPT, b"2"),
        (names.DLQ_ERROR_CLASS, error_class.encode()),
        (names.DLQ_ERROR_CODE, b"image_too_large"),
        (names.DLQ_ERROR_MESSAGE, b"image is 96x72; the limit is 100 pixels"),
        (names.DLQ_ERROR_STACK, b"Traceback (most recent call last):\n  ...\n"),
        (names.DLQ_CONSUMER_GROUP, b"captioner-workers"),
        (names.DLQ_WORKER_ID, b"worker-1"),
        *extra,
    ]
    if failed_at_ms is not None:
        headers.append((names.DLQ_FAILED_AT_MS, str(failed_at_ms).encode()))
    return DeadLetter(
        topic="app.dlq",
        partition=partition,
        offset=offset,
        timestamp_ms=NOW_MS + 5,
        key=correlation_id.encode(),
        value=request_bytes(correlation_id) if value is None else value,
        headers=tuple(headers),
    )


# records and headers


def test_header_pairs_accept_what_confluent_kafka_returns() -> None:
    assert header_pairs(None) == ()
    assert header_pairs([("a", b"1"), ("b", None), ("c", "text")]) == (("a", b"1"), ("c", b"text"))


def test_a_message_becomes_a_dead_letter() -> None:
    message = SimpleNamespace(
        topic=lambda: "app.dlq",
        partition=lambda: 2,
        offset=lambda: 7,
        timestamp=lambda: (1, NOW_MS),
        key=lambda: None,
        value=lambda: None,
        headers=lambda: None,
    )

    record = DeadLetter.from_message(message)

    assert (record.position, record.timestamp_ms, record.key, record.value) == (
        "app.dlq:2:7",
        NOW_MS,
        None,
        b"",
    )
    assert record.error_class == "unknown"
    assert record.failed_at_ms == NOW_MS  # no header: the record's own timestamp


def test_headers_are_read_as_text_and_numbers() -> None:
    record = dead_letter(failed_at_ms=NOW_MS - 10)

    assert record.error_class == "ImageTooLargeError"
    assert record.error_code == "image_too_large"
    assert record.original_topic == "app.requests"
    assert record.int_header(names.ORIGINAL_OFFSET) == 41
    assert record.int_header(names.DLQ_ERROR_CLASS) is None
    assert record.failed_at_ms == NOW_MS - 10


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\xff\xfe",
        b"\xd9\xa1\xd9\xa2",  # Arabic-Indic digits: int() reads them as 12
        b"1_0",
        b" 7",
        b"-3",
        b"0x10",
        b"9" * 30,  # past int64
        b"9" * 5000,  # past int()'s digit limit
        b"99999999999999999",  # a time past year 9999
    ],
)
def test_malformed_origin_numbers_count_as_absent(value: bytes) -> None:
    record = dead_letter(
        extra=(
            (names.ORIGINAL_PARTITION, value),
            (names.ORIGINAL_OFFSET, value),
            (names.ORIGINAL_TIMESTAMP_MS, value),
            (names.DLQ_FAILED_AT_MS, value),
        ),
        failed_at_ms=None,
    )

    assert record.int_header(names.ORIGINAL_PARTITION, high=2**31 - 1) is None
    assert record.origin is None
    assert record.failed_at_ms == record.timestamp_ms


def test_a_well_formed_origin_is_read_whole() -> None:
    origin = dead_letter().origin

    assert origin is not None
    assert (origin.topic, origin.partition, origin.offset, origin.timestamp_ms) == (
        "app.requests",
        3,
        41,
        NOW_MS - 1000,
    )


def test_replay_leaves_out_an_origin_that_does_not_parse_whole() -> None:
    record = dead_letter(extra=((names.ORIGINAL_PARTITION, b"\xff"),))  # the last value counts

    headers = dict(record.replay_headers())

    assert not {names.ORIGINAL_TOPIC, names.ORIGINAL_PARTITION, names.ORIGINAL_OFFSET} & headers.keys()
    assert headers[names.REPLAYED_FROM] == b"app.dlq:0:0"


def test_unreadable_header_names_leave_a_record_without_headers() -> None:
    def headers() -> None:
        raise SystemError("<built-in method headers> returned a result with an exception set")

    message = SimpleNamespace(
        topic=lambda: "app.dlq",
        partition=lambda: 0,
        offset=lambda: 3,
        timestamp=lambda: (1, NOW_MS),
        key=lambda: b"k",
        value=lambda: b"v",
        headers=headers,
    )

    record = DeadLetter.from_message(message)

    assert record.headers == () and record.headers_unreadable
    assert record.error_class == "unknown" and record.origin is None
    assert "unreadable" in render.dead_letter_text(record)


def test_a_readable_value_is_decoded_as_a_request() -> None:
    record = dead_letter(correlation_id="cid-9")

    assert record.request is not None
    assert record.request.reply_topic == "callers.replies"
    assert record.decode_error is None
    assert record.correlation_id == "cid-9"


def test_an_unreadable_value_falls_back_to_the_key() -> None:
    record = dead_letter(correlation_id="key-of-garbage", value=b"\x00garbage bytes")

    assert record.request is None
    assert record.decode_error is not None and record.decode_error.startswith("NotSingleObjectError")
    assert record.correlation_id == "key-of-garbage"


def test_replay_headers_keep_the_origin_drop_the_attempt_and_name_the_dead_letter() -> None:
    record = dead_letter(
        partition=1,
        offset=12,
        extra=(
            ("traceparent", b"00-abc-01"),
            (names.RETRY_DUE_MS, b"1"),
            (names.RETRY_ERROR_CLASS, b"InferenceError"),
            (names.REPLAYED_FROM, b"app.dlq:0:3"),
        ),
    )

    headers = record.replay_headers()

    assert headers == [
        (names.ORIGINAL_TOPIC, b"app.requests"),
        (names.ORIGINAL_PARTITION, b"3"),
        (names.ORIGINAL_OFFSET, b"41"),
        (names.ORIGINAL_TIMESTAMP_MS, str(NOW_MS - 1000).encode()),
        ("traceparent", b"00-abc-01"),
        (names.REPLAYED_FROM, b"app.dlq:1:12"),
    ]


# filters


def test_parse_time_reads_iso_epoch_ms_and_ages() -> None:
    assert parse_time("2024-05-01T12:00:00Z", now=NOW) == NOW_MS
    assert parse_time("2024-05-01T12:00:00", now=NOW) == NOW_MS  # naive means UTC
    assert parse_time("2024-05-01T14:00:00+02:00", now=NOW) == NOW_MS
    assert parse_time(str(NOW_MS), now=NOW) == NOW_MS
    assert parse_time("90m", now=NOW) == NOW_MS - 90 * 60_000
    assert parse_time("1.5h", now=NOW) == NOW_MS - 90 * 60_000
    assert parse_time("2d", now=NOW) == NOW_MS - 2 * 86_400_000
    with pytest.raises(UsageError):
        parse_time("yesterday", now=NOW)


def test_an_empty_filter_selects_everything() -> None:
    assert DeadLetterFilter().selects_all
    assert DeadLetterFilter().matches(dead_letter(value=b"junk"))


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (DeadLetterFilter(error_classes=frozenset({"ImageTooLargeError", "X"})), True),
        (DeadLetterFilter(error_classes=frozenset({"InvalidImageError"})), False),
        (DeadLetterFilter(failed_from_ms=NOW_MS), True),
        (DeadLetterFilter(failed_from_ms=NOW_MS + 1), False),
        (DeadLetterFilter(failed_to_ms=NOW_MS + 1), True),
        (DeadLetterFilter(failed_to_ms=NOW_MS), False),  # until is exclusive
        (DeadLetterFilter(partitions=frozenset({2})), True),
        (DeadLetterFilter(partitions=frozenset({0, 1})), False),
        (DeadLetterFilter(from_offset=5, to_offset=5), True),
        (DeadLetterFilter(from_offset=6), False),
        (DeadLetterFilter(to_offset=4), False),
        (DeadLetterFilter(ids=frozenset({"cid-1"})), True),
        (DeadLetterFilter(ids=frozenset({"cid-2"})), False),
        (DeadLetterFilter(error_classes=frozenset({"ImageTooLargeError"}), partitions=frozenset({1})), False),
    ],
)
def test_filter_criteria_all_have_to_hold(selection: DeadLetterFilter, expected: bool) -> None:
    assert selection.matches(dead_letter(partition=2, offset=5)) is expected


def test_ids_match_the_key_of_an_unreadable_record() -> None:
    record = dead_letter(correlation_id="k-1", value=b"junk")
    assert DeadLetterFilter(ids=frozenset({"k-1"})).matches(record)


def test_inverted_ranges_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        DeadLetterFilter(from_offset=5, to_offset=4)
    with pytest.raises(UsageError):
        DeadLetterFilter(failed_from_ms=NOW_MS, failed_to_ms=NOW_MS)


def test_the_filter_round_trips_through_json_and_has_a_stable_fingerprint() -> None:
    selection = DeadLetterFilter(
        error_classes=frozenset({"B", "A"}),
        failed_from_ms=NOW_MS,
        partitions=frozenset({3}),
        ids=frozenset({"x"}),
    )

    assert selection.to_json() == {
        "error_classes": ["A", "B"],
        "failed_from_ms": NOW_MS,
        "partitions": [3],
        "ids": ["x"],
    }
    assert DeadLetterFilter.from_json(selection.to_json()) == selection
    assert selection.fingerprint() == DeadLetterFilter.from_json(selection.to_json()).fingerprint()
    assert selection.fingerprint() != DeadLetterFilter(error_classes=frozenset({"A"})).fingerprint()
    assert "error class A or B" in selection.describe()
    assert DeadLetterFilter().describe() == "all records"


def test_plan_ranges_starts_at_the_committed_position_and_narrows_to_the_filter() -> None:
    watermarks = {0: (0, 10), 1: (4, 10), 2: (0, 0), 3: (0, 10)}

    assert plan_ranges(watermarks, DeadLetterFilter(), {0: 7, 1: None, 3: 10}) == {0: (7, 10), 1: (4, 10)}
    narrowed = DeadLetterFilter(partitions=frozenset({0, 1}), from_offset=2, to_offset=5)
    assert plan_ranges(watermarks, narrowed) == {0: (2, 6), 1: (4, 6)}


# the replay ledger


def test_each_filter_set_has_its_own_group() -> None:
    assert replay_group("captioner-dlq-replay", DeadLetterFilter()) == "captioner-dlq-replay.all"
    by_class = replay_group("ns", DeadLetterFilter(error_classes=frozenset({"A"})))
    assert by_class.startswith("ns.") and by_class != replay_group(
        "ns", DeadLetterFilter(ids=frozenset({"A"}))
    )


def test_commit_metadata_records_the_filter() -> None:
    selection = DeadLetterFilter(error_classes=frozenset({"A"}), to_offset=9)
    assert filter_of_metadata(commit_metadata(selection)) == selection
    assert filter_of_metadata(None) is None
    assert filter_of_metadata("not json") is None
    assert filter_of_metadata('{"format": "other", "filter": {}}') is None


def test_a_filter_too_long_for_kafka_offset_metadata_is_refused() -> None:
    with pytest.raises(UsageError):
        commit_metadata(DeadLetterFilter(ids=frozenset(f"{n:036d}" for n in range(200))))


def test_the_ledger_covers_records_below_a_groups_position_that_its_filter_selects() -> None:
    by_class = ReplayedRange("ns.a", DeadLetterFilter(error_classes=frozenset({"A"})), {0: 5})
    ledger = ReplayLedger((by_class,))

    assert ledger.replayed_by(dead_letter(error_class="A", offset=4)) == "ns.a"
    assert ledger.replayed_by(dead_letter(error_class="A", offset=5)) is None  # not reached yet
    assert ledger.replayed_by(dead_letter(error_class="B", offset=1)) is None  # passed over, not replayed
    assert ledger.replayed_by(dead_letter(error_class="A", offset=1, partition=1)) is None


# the replayer


class DeliveryError:
    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text


class FakeProducer:
    """Delivers (or fails, for the keys in `failing`) on the next poll or flush, like librdkafka."""

    def __init__(self, failing: frozenset[bytes] = frozenset()) -> None:
        self.failing = failing
        self.sent: list[dict[str, Any]] = []
        self._pending: list[tuple[Any, bytes | None]] = []

    def produce(self, topic: str, *, key: bytes | None, value: bytes, headers: Any, on_delivery: Any) -> None:
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": headers})
        self._pending.append((on_delivery, key))

    def poll(self, _timeout: float = 0) -> int:
        pending, self._pending = self._pending, []
        for on_delivery, key in pending:
            on_delivery(DeliveryError("broker said no") if key in self.failing else None, None)
        return len(pending)

    def flush(self, _timeout: float = 0) -> int:
        self.poll()
        return 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})


RETRY_TOPICS = ("app.requests.retry.1", "app.requests.retry.2")


def no_commits() -> list[dict[int, int]]:
    return []


def replayer(
    producer: FakeProducer,
    commits: list[dict[int, int]],
    *,
    selection: DeadLetterFilter | None = None,
    ledger: ReplayLedger | None = None,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    to: str | None = None,
) -> Replayer:
    return Replayer(
        summary=ReplaySummary(topic="app.dlq", group="g", selection="test", dry_run=dry_run, to=to),
        producer=producer,
        commit=commits.append,
        selection=selection or DeadLetterFilter(),
        ledger=ledger or ReplayLedger(),
        targets=TargetTopics(
            producer, requests="app.requests", retries=RETRY_TOPICS, override=to, timeout_s=1
        ),
        pacer=Pacer(None),
        stop=stop or threading.Event(),
    )


def test_replay_publishes_same_key_and_value_to_the_original_topic_and_commits_after_acks() -> None:
    producer, commits = FakeProducer(), no_commits()
    records = [dead_letter(offset=0, correlation_id="a"), dead_letter(offset=1, correlation_id="b")]

    summary = replayer(producer, commits).run(records, on_record=lambda _: None)

    assert [(s["topic"], s["key"], s["value"]) for s in producer.sent] == [
        ("app.requests", r.key, r.value) for r in records
    ]
    assert (names.REPLAYED_FROM, b"app.dlq:0:1") in producer.sent[1]["headers"]
    assert summary.counts.replayed == 2
    assert summary.exit_code is ExitCode.OK
    assert commits == [{0: 2}]


def test_records_not_selected_or_already_replayed_are_passed_and_committed() -> None:
    producer, commits = FakeProducer(), no_commits()
    ledger = ReplayLedger((ReplayedRange("other", DeadLetterFilter(), {0: 1}),))
    records = [
        dead_letter(offset=0),  # replayed by another group
        dead_letter(offset=1, error_class="Other"),
        dead_letter(offset=2),
    ]
    selection = DeadLetterFilter(error_classes=frozenset({"ImageTooLargeError"}))

    summary = replayer(producer, commits, selection=selection, ledger=ledger).run(records, lambda _: None)

    assert len(producer.sent) == 1
    counts = summary.counts
    assert (counts.already_replayed, counts.not_selected, counts.replayed) == (1, 1, 1)
    assert commits == [{0: 3}]


def test_a_failed_delivery_holds_its_partition_and_the_commit_behind_it() -> None:
    producer, commits = FakeProducer(failing=frozenset({b"bad"})), no_commits()
    records = [
        dead_letter(offset=0, correlation_id="ok"),
        dead_letter(offset=1, correlation_id="bad"),
        dead_letter(offset=2, correlation_id="later"),
        dead_letter(offset=0, partition=1, correlation_id="other-partition"),
    ]
    run = replayer(producer, commits)

    def deliver_each(_counts: object) -> None:
        producer.poll()

    summary = run.run(records, on_record=deliver_each)

    assert [s["key"] for s in producer.sent] == [b"ok", b"bad", b"other-partition"]
    assert (summary.counts.replayed, summary.counts.failed, summary.counts.held_back) == (2, 1, 1)
    assert summary.exit_code is ExitCode.FAILURES
    assert summary.errors == ["app.dlq:0:1: broker said no"]
    assert commits == [{0: 1, 1: 1}]


DEAD_LETTER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
DEAD_LETTER_SPAN = "00f067aa0ba902b7"  # the request's publish span, carried unchanged to the DLQ


def test_each_replay_is_a_publish_span_in_the_dead_letters_trace_and_the_record_names_it() -> None:
    producer = FakeProducer(failing=frozenset({b"bad"}))
    traceparent = f"00-{DEAD_LETTER_TRACE}-{DEAD_LETTER_SPAN}-01".encode()
    records = [
        dead_letter(offset=0, correlation_id="ok", extra=((names.TRACEPARENT, traceparent),)),
        dead_letter(offset=0, partition=1, correlation_id="bad"),
    ]

    with recorded_spans() as exporter:
        replayer(producer, no_commits()).run(records, on_record=lambda _: producer.poll())
        ok, bad = exporter.get_finished_spans()

    assert (ok.name, ok.kind, ok.attributes["captioner.replayed_from"]) == (
        "app.requests publish",
        SpanKind.PRODUCER,
        "app.dlq:0:0",
    )
    assert format_trace_id(ok.context.trace_id) == DEAD_LETTER_TRACE
    assert ok.parent is not None and format_span_id(ok.parent.span_id) == DEAD_LETTER_SPAN
    sent_context = [value for name, value in producer.sent[0]["headers"] if name == names.TRACEPARENT]
    assert sent_context == [f"00-{DEAD_LETTER_TRACE}-{format_span_id(ok.context.span_id)}-01".encode()]
    assert bad.parent is None and bad.status.status_code is StatusCode.ERROR  # no context: a new trace


def test_a_dry_run_plans_but_neither_publishes_nor_commits() -> None:
    producer, commits = FakeProducer(), no_commits()

    summary = replayer(producer, commits, dry_run=True).run([dead_letter()], lambda _: None)

    assert producer.sent == [] and commits == []
    assert summary.counts.would_replay == 1
    assert summary.planned[0].target == "app.requests"
    assert summary.planned[0].correlation_id == "cid-1"


def test_stopping_ends_after_the_current_record_and_commits_it() -> None:
    producer, commits, stop = FakeProducer(), no_commits(), threading.Event()
    records = [dead_letter(offset=n, correlation_id=str(n)) for n in range(5)]

    summary = replayer(producer, commits, stop=stop).run(records, on_record=lambda _: stop.set())

    assert len(producer.sent) == 1
    assert summary.interrupted and summary.exit_code is ExitCode.INTERRUPTED
    assert commits == [{0: 1}]


def test_a_record_without_an_origin_goes_to_the_request_topic() -> None:
    record = replace(dead_letter(), headers=())
    producer = FakeProducer()

    replayer(producer, []).run([record], lambda _: None)

    assert producer.sent[0]["topic"] == "app.requests"


def with_origin(record: DeadLetter, topic: bytes) -> DeadLetter:
    return replace(record, headers=((names.ORIGINAL_TOPIC, topic), *record.headers[1:]))


@pytest.mark.parametrize("dry_run", [False, True])
def test_replay_follows_the_origin_header_only_to_the_services_own_topics(dry_run: bool) -> None:
    producer, commits = FakeProducer(), no_commits()
    records = [
        with_origin(dead_letter(offset=0, correlation_id="retried"), b"app.requests.retry.2"),
        with_origin(dead_letter(offset=1, correlation_id="forged"), b"app.replies"),
        dead_letter(offset=2, correlation_id="after-the-forged-one"),
        dead_letter(offset=0, partition=1, correlation_id="other-partition"),
    ]

    summary = replayer(producer, commits, dry_run=dry_run).run(records, lambda _: producer.poll())

    sent = summary.planned if dry_run else [SimpleNamespace(**s) for s in producer.sent]
    assert [s.target if dry_run else s.topic for s in sent] == ["app.requests.retry.2", "app.requests"]
    counts = summary.counts
    assert (counts.failed, counts.held_back) == (1, 1)  # the rest of its partition waits behind it
    assert summary.exit_code is ExitCode.FAILURES
    [error] = summary.errors
    assert error.startswith(
        "app.dlq:0:1: not replayed: its captioner.original.topic header names 'app.replies'"
    )
    assert "--to" in error
    assert commits == ([] if dry_run else [{0: 1, 1: 1}])  # never past the refused record


def test_to_sends_every_record_to_the_named_topic_whatever_its_origin() -> None:
    producer, commits = FakeProducer(), no_commits()
    records = [
        with_origin(dead_letter(offset=0), b"app.replies"),
        replace(dead_letter(offset=1), headers=()),
        dead_letter(offset=2),
    ]

    summary = replayer(producer, commits, to="app.requests").run(records, lambda _: None)

    assert [s["topic"] for s in producer.sent] == ["app.requests"] * 3
    assert summary.counts.replayed == 3 and summary.exit_code is ExitCode.OK
    assert "every record to: app.requests (--to)" in render.replay_text(summary)


@pytest.mark.parametrize(
    "topic", [b"", b"\xff\xfeapp.replies", b"app replies", b"app/replies", b"x" * 250, b"r\xc3\xa9ponses"]
)
def test_an_origin_that_is_no_topic_name_counts_as_absent(topic: bytes) -> None:
    record = with_origin(dead_letter(), topic)
    producer = FakeProducer()

    replayer(producer, []).run([record], lambda _: None)

    assert record.original_topic is None and record.origin is None
    assert producer.sent[0]["topic"] == "app.requests"


def test_to_must_be_a_topic_name() -> None:
    assert check_topic_name("app.requests") == "app.requests"
    with pytest.raises(UsageError, match="not a topic name"):
        check_topic_name("app requests; rm -rf")


def test_the_pacer_spaces_sends_to_the_rate() -> None:
    now = [100.0]
    waited: list[float] = []

    def idle(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    pacer = Pacer(4.0, clock=lambda: now[0])
    for _ in range(3):
        pacer.wait(idle, threading.Event())

    assert now[0] == pytest.approx(100.5)
    assert sum(waited) == pytest.approx(0.5)


# list


def test_the_overview_counts_by_class_time_and_partition() -> None:
    hour = 3_600_000
    records = [
        dead_letter(offset=0, failed_at_ms=NOW_MS),
        dead_letter(offset=1, failed_at_ms=NOW_MS + 60_000),
        dead_letter(offset=0, partition=1, error_class="NotSingleObjectError", failed_at_ms=NOW_MS + hour),
    ]

    overview = summarize(records, topic="app.dlq", selection="all records", bucket=Bucket.hour)

    assert overview.total == 3
    assert [(e.error_class, e.count, e.first_failed_ms, e.last_failed_ms) for e in overview.by_error] == [
        ("ImageTooLargeError", 2, NOW_MS, NOW_MS + 60_000),
        ("NotSingleObjectError", 1, NOW_MS + hour, NOW_MS + hour),
    ]
    assert [(Bucket.hour.label(t.bucket_start_ms), t.error_class, t.count) for t in overview.by_time] == [
        ("2024-05-01T12Z", "ImageTooLargeError", 2),
        ("2024-05-01T13Z", "NotSingleObjectError", 1),
    ]
    assert [(p.partition, p.count, p.first_offset, p.last_offset) for p in overview.by_partition] == [
        (0, 2, 0, 1),
        (1, 1, 0, 0),
    ]


# the command line, without a broker


@pytest.mark.parametrize(
    "args",
    [
        ["show"],
        ["show", "--offset", "3"],
        ["list", "--since", "yesterday"],
        ["replay", "--from-offset", "5", "--to-offset", "1"],
        ["replay", "--rate", "0"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["dlq", *args], env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.exit_code == ExitCode.USAGE, result.output


@pytest.mark.parametrize("command", ["list", "replay"])
def test_an_unreachable_cluster_exits_3(command: str) -> None:
    result = CliRunner().invoke(
        app, ["dlq", command, "--timeout", "2"], env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    )
    assert result.exit_code == ExitCode.UNAVAILABLE, result.output
    assert "Kafka unreachable" in result.output


# output


def test_show_prints_the_request_and_headers_but_not_the_image() -> None:
    record = dead_letter(correlation_id="cid-7")

    text = render.dead_letter_text(record)
    data = render.dead_letter_json(record)

    assert "correlation id  cid-7" in text
    assert "image           100 bytes" in text
    assert "captioner.dlq.error.message: image is 96x72; the limit is 100 pixels" in text
    assert data["request"]["image_bytes"] == 100 and "image" not in data["request"]
    assert "\\x89PNG" not in text and "\\x89PNG" not in render.to_json(data)


def test_show_of_an_unreadable_record_names_the_key_and_the_decode_error() -> None:
    text = render.dead_letter_text(dead_letter(correlation_id="k-9", value=b"junk"))

    assert "key         k-9" in text
    assert "request     not a readable CaptionRequest: NotSingleObjectError" in text


def garbage_dead_letter(offset: int = 0) -> DeadLetter:
    return replace(
        dead_letter(offset=offset, value=b"junk"),
        timestamp_ms=2**62,  # a producer's clock: Kafka takes any CreateTime
        key=b"\x1b]0;owned\x07" + b"k" * 100_000,
        headers=(
            (names.DLQ_ERROR_CLASS, b"\xff\xfe\x1b[2J" + b"E" * 100_000),
            (names.DLQ_ERROR_CODE, b""),
            (names.DLQ_FAILED_AT_MS, b"99999999999999999"),
            (names.ORIGINAL_TOPIC, b"\x80"),
            (names.DLQ_ERROR_MESSAGE, b"m" * 1_000_000),
            ("\u202e" + "n" * 1000, b"\r\x1b[1A"),
        ),
    )


def test_list_and_show_survive_garbage_headers_and_bound_what_they_print() -> None:
    records = [garbage_dead_letter(0), garbage_dead_letter(1)]

    overview = summarize(records, topic="app.dlq", selection="all records", bucket=Bucket.day)
    texts = [render.overview_text(overview), render.to_json(render.overview_json(overview))]
    texts += [render.dead_letter_text(records[0]), render.to_json(render.dead_letter_json(records[0]))]

    assert overview.total == 2 and len(overview.by_error) == 1
    assert overview.by_error[0].error_code == "unknown"
    assert "9999-12-31" in texts[0]  # clamped to the last day a datetime holds
    for text in texts:
        assert len(text) < 40_000
        assert not {"\x1b", "\r", "\x07", "\u202e"} & set(text)
    assert "(1000000 bytes in all)" in texts[2]
    assert "origin      unknown" in texts[2]


def test_an_age_beyond_the_calendar_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_time("99999999999w", now=NOW)


def test_the_replay_summary_is_one_line_per_fact() -> None:
    summary = ReplaySummary(topic="app.dlq", group="ns.all", selection="all records", dry_run=True)
    summary.counts.would_replay = 1
    summary.planned.append(PlannedReplay("app.dlq:0:3", "cid-1", "ImageTooLargeError", "app.requests"))

    text = render.replay_text(summary)

    assert text.splitlines()[0] == "would replay 1 of the dead letters in app.dlq selected by: all records"
    assert "app.dlq:0:3 -> app.requests  ImageTooLargeError  cid-1" in text
    assert summary.to_json()["exit_code"] == 0
