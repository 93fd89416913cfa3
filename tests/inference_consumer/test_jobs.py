"""Headers are hostile: every one the worker reads parses to a value or to 'absent', never raises."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from inference_consumer.jobs import Job, Origin
from schemas import headers as record_headers

GARBAGE = [b"x", b"", b"-5", b"1.5", b" 2", b"\xff\xfe", b"9" * 40, "²".encode(), b"0x10"]


def message(headers: list[tuple[str, bytes | None]], *, topic: str = "captioner.requests") -> Message:
    return Message(
        topic=topic, partition=1, offset=42, key=b"k", value=b"v", headers=headers, timestamp=(1, 1700)
    )


@pytest.mark.parametrize("value", GARBAGE)
def test_a_malformed_attempt_reads_as_the_first(value: bytes) -> None:
    assert Job.from_message(message([(record_headers.ATTEMPT, value)])).attempt == 1


def test_a_well_formed_attempt_is_kept() -> None:
    assert Job.from_message(message([(record_headers.ATTEMPT, b"3")])).attempt == 3


@pytest.mark.parametrize("value", GARBAGE)
def test_a_malformed_due_time_reads_as_due_now(value: bytes) -> None:
    assert Job.from_message(message([(record_headers.RETRY_DUE_MS, value)])).retry_due_ms() == 0


@pytest.mark.parametrize(
    "origin",
    [
        {record_headers.ORIGINAL_TOPIC: b"t"},  # the others missing
        {
            record_headers.ORIGINAL_TOPIC: b"bad topic!",
            record_headers.ORIGINAL_PARTITION: b"0",
            record_headers.ORIGINAL_OFFSET: b"1",
            record_headers.ORIGINAL_TIMESTAMP_MS: b"2",
        },
        {
            record_headers.ORIGINAL_TOPIC: b"t",
            record_headers.ORIGINAL_PARTITION: b"x",
            record_headers.ORIGINAL_OFFSET: b"1",
            record_headers.ORIGINAL_TIMESTAMP_MS: b"2",
        },
    ],
)
def test_malformed_origin_headers_fall_back_to_the_records_own_position(origin: dict[str, bytes]) -> None:
    job = Job.from_message(message(list(origin.items())))
    assert job.origin() == Origin("captioner.requests", 1, 42, 1700)


def test_well_formed_origin_headers_are_kept() -> None:
    origin = {
        record_headers.ORIGINAL_TOPIC: b"captioner.requests",
        record_headers.ORIGINAL_PARTITION: b"5",
        record_headers.ORIGINAL_OFFSET: b"9",
        record_headers.ORIGINAL_TIMESTAMP_MS: b"1600",
    }
    job = Job.from_message(message(list(origin.items()), topic="captioner.requests.retry.1"))
    assert job.origin() == Origin("captioner.requests", 5, 9, 1600)


@pytest.mark.parametrize(("marker", "replayed"), [(b"dlq:0:4", True), (b"x", False), (b"\xff", False)])
def test_only_a_well_formed_replay_marker_counts(marker: bytes, replayed: bool) -> None:
    assert Job.from_message(message([(record_headers.REPLAYED_FROM, marker)])).replayed is replayed


def test_a_cache_scope_is_32_lowercase_hex_digits_or_no_entry_at_all() -> None:
    assert Job.from_message(message([])).cache_scope == "shared"  # no header: the shared scope
    scope = "0123456789abcdef" * 2
    assert Job.from_message(message([(record_headers.CACHE_SCOPE, scope.encode())])).cache_scope == scope
    for value in [*GARBAGE, b"shared", scope.upper().encode(), (scope + "0").encode()]:
        job = Job.from_message(message([(record_headers.CACHE_SCOPE, value)]))
        assert job.cache_scope is None, value  # never filed as shared: that would show it to everyone


def test_null_header_values_and_a_null_value_are_tolerated() -> None:
    raw = Message(
        topic="t", partition=0, offset=0, key=None, value=None, headers=[("a", None)], timestamp=(1, 0)
    )
    job = Job.from_message(raw)
    assert job.value == b"" and job.headers == {} and job.key is None


class UnreadableHeaders:
    """What confluent-kafka does with a header name that is not UTF-8."""

    def __getattr__(self, name: str) -> object:
        return getattr(message([]), name)

    def headers(self) -> object:
        raise SystemError("<built-in method headers> returned a result with an exception set")


def test_headers_the_client_cannot_read_are_treated_as_absent() -> None:
    job = Job.from_message(UnreadableHeaders())  # type: ignore[arg-type]
    assert job.headers == {} and job.attempt == 1 and job.offset == 42


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (b"job-1", "key 'job-1'"),
        (b"a\nb\x1b[31m\xff", "key 'a\\nb\\x1b[31m\\xff'"),
        ("é\u2028".encode(), "key 'é\\u2028'"),
        (b"x" * 200, f"key '{'x' * 128}'... (200 bytes)"),
        (None, "without a key"),
    ],
)
def test_a_job_that_did_not_decode_is_named_by_its_escaped_key(key: bytes | None, shown: str) -> None:
    job = Job.from_message(
        Message(topic="captioner.requests", partition=0, offset=1, key=key, value=b"x", timestamp=(1, 1700))
    )

    assert job.correlation_id is None
    assert job.name == shown
