"""The two framings (schemas/framing.py): telling them apart, single-object left as it was without a
registry, and the registry client's bounds, against a real registry (Apicurio, tests/support/registry.py)
or a real socket that refuses or never answers."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka.schema_registry import Schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    CACHE_ENTRY_CODEC,
    REPLY_CODEC,
    REQUEST_CODEC,
    CaptionCacheEntry,
    CaptionerError,
    CaptionReply,
    CaptionRequest,
    NotSingleObjectError,
    ReplyStatus,
    TrailingBytesError,
)
from schemas.errors import (
    SchemaLookupsLimitedError,
    SchemaRegistryUnavailableError,
    UnknownSchemaIdError,
    WriterSchemaMismatchError,
)
from schemas.framing import (
    SINGLE_OBJECT_CODECS,
    UNREACHABLE_HOLD_S,
    Framing,
    LookupBudget,
    RecordCodecs,
    RegistryClient,
    framing_of,
    registry_codecs,
    unreadable_writer_schema,
)
from tests.support.registry import LocalRegistry, Publisher, request_schema_text

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
REQUEST = CaptionRequest(
    correlation_id="c-1",
    image=b"\x89PNG not really",
    content_type="image/png",
    reply_topic="captioner.replies",
    deadline=NOW + timedelta(seconds=30),
    created_at=NOW,
)
REPLY = CaptionReply(
    correlation_id="c-1",
    status=ReplyStatus.SUCCEEDED,
    model="m",
    worker_id="w",
    title="a cat",
    completed_at=NOW,
)
ENTRY = CaptionCacheEntry(
    image_sha256="ab" * 32,
    model="m",
    max_new_tokens=20,
    title="a cat",
    worker_id="w",
    correlation_id="c-1",
    completed_at=NOW,
)


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def framed(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def client(
    url: str, clock: FrozenClock, *, max_schemas: int = 100, lookups_per_s: float = 5
) -> RegistryClient:
    return RegistryClient(
        {"url": url, "timeout": 2.0, "max.retries": 0},
        max_schemas=max_schemas,
        unknown_id_ttl_s=60,
        lookups_per_s=lookups_per_s,
        clock=clock,
    )


# --- telling the framings apart, and nothing changed without a registry ---


@given(st.binary(max_size=64))
def test_a_zero_first_byte_is_the_registry_framing_and_anything_else_single_object(data: bytes) -> None:
    expected = Framing.CONFLUENT if data[:1] == b"\x00" else Framing.SINGLE_OBJECT
    assert framing_of(data) is expected


def test_without_a_registry_every_record_is_written_and_read_as_before() -> None:
    codecs = SINGLE_OBJECT_CODECS
    assert codecs.requests.encode(REQUEST, topic="t", framing=Framing.CONFLUENT) == REQUEST_CODEC.encode(
        REQUEST
    )
    assert codecs.replies.encode(REPLY, topic="t") == REPLY_CODEC.encode(REPLY)
    assert codecs.cache_entries.encode(ENTRY, topic="t") == CACHE_ENTRY_CODEC.encode(ENTRY)
    assert codecs.requests.decode_framed(REQUEST_CODEC.encode(REQUEST)) == (REQUEST, Framing.SINGLE_OBJECT)
    with pytest.raises(NotSingleObjectError):
        codecs.requests.decode(framed(1, b"\x02ab"))


def test_the_lookup_budget_allows_a_burst_then_its_rate() -> None:
    clock = FrozenClock()
    budget = LookupBudget(rate_per_s=2, burst=2, clock=clock)
    assert [budget.take() for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert [budget.take(), budget.take()] == [True, False]


# --- a registry that is down or hangs ---


@pytest.fixture
def refusing_url() -> str:
    """A loopback port nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that takes connections (the kernel's backlog) and never answers: a hung registry."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("url_fixture", ["refusing_url", "silent_url"])
def test_a_registry_that_is_down_or_hangs_is_unavailable_and_left_alone_for_a_moment(
    url_fixture: str, request: pytest.FixtureRequest
) -> None:
    clock = FrozenClock()
    registry = client(request.getfixturevalue(url_fixture), clock)
    codecs = registry_codecs(registry)
    with pytest.raises(SchemaRegistryUnavailableError) as raised:
        codecs.requests.decode(framed(7, b"\x02ab"))
    assert raised.value.retriable
    assert registry.requests == 1
    for schema_id in range(8, 40):  # more records, other ids: no request while the hold lasts
        with pytest.raises(SchemaRegistryUnavailableError):
            codecs.requests.decode(framed(schema_id, b"\x02ab"))
    assert registry.requests == 1
    clock.now += UNREACHABLE_HOLD_S + 0.1
    with pytest.raises(SchemaRegistryUnavailableError):
        codecs.requests.decode(framed(7, b"\x02ab"))
    assert registry.requests == 2


# --- against a real registry ---


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def registry_client(schema_registry: LocalRegistry, clock: FrozenClock) -> Iterator[RegistryClient]:
    registry = client(schema_registry.url, clock)
    yield registry
    registry.close()


@pytest.fixture
def codecs(registry_client: RegistryClient) -> RecordCodecs:
    return registry_codecs(registry_client)


@pytest.fixture
def topic() -> str:
    return f"framing-{uuid.uuid4().hex[:8]}"


@pytest.mark.integration
def test_a_prepared_topic_is_written_without_a_registry_request(
    codecs: RecordCodecs, registry_client: RegistryClient, topic: str
) -> None:
    codecs.requests.prepare(topic)
    before = registry_client.requests
    values = [codecs.requests.encode(REQUEST, topic=topic) for _ in range(20)]
    assert registry_client.requests == before
    assert all(framing_of(value) is Framing.CONFLUENT for value in values)
    assert codecs.requests.decode_framed(values[0]) == (REQUEST, Framing.CONFLUENT)


@pytest.mark.integration
def test_a_publishers_record_with_an_evolved_schema_reads_as_ours(
    codecs: RecordCodecs, schema_registry: LocalRegistry, topic: str
) -> None:
    publisher = Publisher(schema_registry.url)
    evolved = request_schema_text(name="priority", type=["null", "int"], default=None)
    value = publisher.request_value(REQUEST, topic=topic, schema_text=evolved, priority=3)
    assert codecs.requests.decode(value) == REQUEST


@pytest.mark.integration
def test_a_writer_schema_of_another_record_type_is_a_mismatch(codecs: RecordCodecs, topic: str) -> None:
    codecs.replies.prepare(topic)
    reply_framed = codecs.replies.encode(REPLY, topic=topic)
    with pytest.raises(WriterSchemaMismatchError):
        codecs.requests.decode(reply_framed)


@pytest.mark.integration
def test_trailing_bytes_after_a_registry_framed_record_are_refused(codecs: RecordCodecs, topic: str) -> None:
    codecs.requests.prepare(topic)
    with pytest.raises(TrailingBytesError):
        codecs.requests.decode(codecs.requests.encode(REQUEST, topic=topic) + b"\x00")


@pytest.mark.integration
def test_an_unknown_id_is_answered_from_memory(codecs: RecordCodecs, registry_client: RegistryClient) -> None:
    unknown = 2**31 - 7
    for _ in range(5):
        with pytest.raises(UnknownSchemaIdError) as raised:
            codecs.requests.decode(framed(unknown, b"\x02ab"))
        assert raised.value.code == "unknown_schema_id" and not raised.value.retriable
    assert registry_client.requests == 1


@pytest.mark.integration
def test_a_flood_of_random_ids_makes_at_most_the_lookup_budget_of_requests(
    codecs: RecordCodecs, registry_client: RegistryClient
) -> None:
    outcomes = []
    for schema_id in range(10**9, 10**9 + 200):  # the clock stands still: no budget comes back
        with pytest.raises(CaptionerError) as raised:
            codecs.requests.decode(framed(schema_id, b"\x02ab"))
        outcomes.append(type(raised.value))
    assert registry_client.requests == 5  # the burst, lookups_per_s
    assert outcomes.count(UnknownSchemaIdError) == 5
    assert outcomes.count(SchemaLookupsLimitedError) == 195
    assert SchemaLookupsLimitedError("x").retriable


@pytest.mark.integration
def test_found_schemas_are_kept_within_their_bound(
    schema_registry: LocalRegistry, clock: FrozenClock, topic: str
) -> None:
    publisher = Publisher(schema_registry.url)
    values = [
        publisher.request_value(
            REQUEST,
            topic=topic,
            schema_text=request_schema_text(name=f"extra{n}", type=["null", "int"], default=None),
        )
        for n in range(3)
    ]
    registry = client(schema_registry.url, clock, max_schemas=2, lookups_per_s=100)
    codecs = registry_codecs(registry)
    for value in values * 2:
        assert codecs.requests.decode(value) == REQUEST
    assert len(registry._found) == 2
    assert registry.requests == 6  # three ids cycled through an LRU of two: every look-up misses


@pytest.mark.integration
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), known=st.booleans(), schema_id=st.integers(0, 2**32 - 1))
def test_random_bytes_after_a_zero_byte_only_raise_the_error_family(
    codecs: RecordCodecs, registered_id: int, body: bytes, known: bool, schema_id: int
) -> None:
    try:
        decoded = codecs.requests.decode(framed(registered_id if known else schema_id, body))
    except CaptionerError:
        return
    assert isinstance(decoded, CaptionRequest)


@pytest.fixture
def registered_id(schema_registry: LocalRegistry, topic: str) -> int:
    return Publisher(schema_registry.url).register(topic, request_schema_text())


@pytest.mark.integration
def test_backward_is_set_where_nothing_stricter_is_in_force(
    registry_client: RegistryClient, schema_registry: LocalRegistry, topic: str
) -> None:
    plain = Publisher(schema_registry.url).client
    assert registry_client.ensure_backward(f"{topic}-value") == "BACKWARD"  # the test registry's global: NONE
    assert plain.get_compatibility(f"{topic}-value") == "BACKWARD"
    plain.set_compatibility(f"{topic}.strict-value", "FULL_TRANSITIVE")
    assert registry_client.ensure_backward(f"{topic}.strict-value") == "FULL_TRANSITIVE"
    assert plain.get_compatibility(f"{topic}.strict-value") == "FULL_TRANSITIVE"


def request_schema_with(field_type: object, default: object) -> Schema:
    return Schema(request_schema_text(name="extra", type=field_type, default=default), "AVRO")


@pytest.mark.parametrize(
    ("field_type", "default"),
    [
        ({"type": "array", "items": "null"}, []),
        ({"type": "array", "items": {"type": "record", "name": "Nothing", "fields": []}}, []),
        ({"type": "array", "items": {"type": "fixed", "name": "Empty", "size": 0}}, []),
        ({"type": "map", "values": {"type": "array", "items": {"type": "array", "items": "null"}}}, {}),
    ],
)
def test_a_writer_schema_with_arrays_of_items_that_take_no_bytes_is_refused(
    field_type: object, default: object
) -> None:
    """A few bytes could claim 2^62 such items, read one by one: a record that never ends."""
    assert "no bytes" in (unreadable_writer_schema(request_schema_with(field_type, default)) or "")


@pytest.mark.parametrize(
    ("field_type", "default"),
    [
        ({"type": "array", "items": "int"}, []),
        ({"type": "array", "items": ["null", "int"]}, []),
    ],
)
def test_a_writer_schema_whose_every_item_takes_a_byte_is_read(field_type: object, default: object) -> None:
    assert unreadable_writer_schema(request_schema_with(field_type, default)) is None
    assert unreadable_writer_schema(Schema(REQUEST_CODEC.writer.json_text(), "AVRO")) is None


@pytest.mark.integration
def test_a_registered_schema_with_empty_items_is_a_mismatch_not_an_endless_read(
    codecs: RecordCodecs, registry_client: RegistryClient, schema_registry: LocalRegistry, topic: str
) -> None:
    # Compatible under BACKWARD (a field with a default): the registry takes it; the worker must not.
    schema_id = Publisher(schema_registry.url).register(
        topic, request_schema_text(name="extra", type={"type": "array", "items": "null"}, default=[])
    )
    body = REQUEST_CODEC.encode(REQUEST)[10:] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f\x00"  # 2^62 nulls
    for _ in range(3):
        with pytest.raises(WriterSchemaMismatchError, match="no bytes"):
            codecs.requests.decode(framed(schema_id, body))
    assert registry_client.requests == 1  # the verdict is kept, like an unknown id


def test_a_recursive_writer_schema_is_refused() -> None:
    """fastavro reads one by recursion as deep as the bytes say: 100 KB of them overflow the C stack."""
    node = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}
    assert "recursive" in (unreadable_writer_schema(request_schema_with(["null", node], None)) or "")
