"""The two framings a record may come in, and the Schema Registry's (docs/schema-registry.md).

Single-object encoding (codec.py): C3 01, the writer schema's CRC-64-AVRO fingerprint, the Avro body.
The Confluent wire format: a zero byte, the writer schema's 4-byte big-endian id in a schema registry, the
Avro body. The first byte tells them apart. Readers take both; a worker answers in the framing the request
came in; writers use the registry's only when a registry is configured.

The registry framing goes through confluent-kafka's AvroSerializer and AvroDeserializer, over a
SchemaRegistryClient whose requests are bounded here: a record names any id it likes, so the schemas found
are kept in a bounded LRU, ids the registry does not know are answered from memory for a while, ids not
yet cached are looked up within a rate budget, and after a failed request the registry is left alone for
a moment rather than every record waiting out its own timeout.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic

from cachetools import LRUCache, TTLCache
from confluent_kafka.schema_registry import (
    RegisteredSchema,
    Schema,
    SchemaRegistryClient,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.common.serde import ParsedSchemaCache
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema
from fastavro.read import SchemaResolutionError
from fastavro.schema import expand_schema

from schemas.codec import (
    CACHE_ENTRY_CODEC,
    REPLY_CODEC,
    REQUEST_CODEC,
    CaptionCacheEntry,
    CaptionReply,
    CaptionRequest,
    RecordCodec,
    RecordT,
)
from schemas.errors import (
    CaptionerError,
    RecordDecodeError,
    SchemaLookupsLimitedError,
    SchemaRegistrationError,
    SchemaRegistryUnavailableError,
    TrailingBytesError,
    TruncatedRecordError,
    UnknownSchemaIdError,
    WriterSchemaMismatchError,
)

CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_SIZE = 5  # the zero byte and a 4-byte schema id
BACKWARD = "BACKWARD"
# After a request to the registry fails, ids not yet cached fail at once for this long: a registry that is
# down costs one timeout per hold, not one per record.
UNREACHABLE_HOLD_S = 1.0
_MAX_SCHEMA_DEPTH = 64
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NOT_FOUND = 404
_CONFLICT = 409
_UNPROCESSABLE = 422


class Framing(StrEnum):
    SINGLE_OBJECT = "single-object"
    CONFLUENT = "confluent"


def framing_of(data: bytes) -> Framing:
    """Which framing a record claims: a zero first byte is the Confluent wire format's; anything else is
    read as single-object encoding, whose own checks refuse what is neither."""
    return Framing.CONFLUENT if data[:1] == CONFLUENT_MAGIC else Framing.SINGLE_OBJECT


def subject_of(topic: str) -> str:
    """TopicNameStrategy: a topic's record values are registered under `<topic>-value`."""
    return f"{topic}-{MessageField.VALUE}"


class LookupBudget:
    """A token bucket: `rate_per_s` look-ups a second on average, `burst` at once."""

    def __init__(self, *, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class RegistryClient(SchemaRegistryClient):
    """A SchemaRegistryClient whose look-ups by id and registrations are bounded (see the module's
    docstring) and whose failures are the project's errors. `requests` counts the HTTP requests made by
    look-ups and registrations (tests read it)."""

    def __init__(
        self,
        conf: dict[str, Any],
        *,
        max_schemas: int,
        unknown_id_ttl_s: float,
        lookups_per_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(conf)
        self.max_schemas = max_schemas
        self._clock = clock
        self._lock = threading.Lock()
        # Kept here rather than in the base client's cache, which grows with every id ever found.
        self._found: LRUCache[int, Schema] = LRUCache(maxsize=max_schemas)
        self._unknown: TTLCache[int, bool] = TTLCache(
            maxsize=max_schemas, ttl=max(unknown_id_ttl_s, 1e-3), timer=clock
        )
        self._refused: TTLCache[int, str] = TTLCache(
            maxsize=max_schemas, ttl=max(unknown_id_ttl_s, 1e-3), timer=clock
        )
        self._registered: LRUCache[tuple[str, Schema], RegisteredSchema] = LRUCache(maxsize=max_schemas)
        self._budget = LookupBudget(rate_per_s=lookups_per_s, burst=max(1, int(lookups_per_s)), clock=clock)
        self._unreachable_until = 0.0
        self.requests = 0

    def get_schema(
        self,
        schema_id: int,
        subject_name: str | None = None,
        fmt: str | None = None,
        reference_format: str | None = None,
    ) -> Schema:
        with self._lock:
            found = self._found.get(schema_id)
            if found is not None:
                return found
            if schema_id in self._unknown:
                raise UnknownSchemaIdError(schema_id)
            refused = self._refused.get(schema_id)
            if refused is not None:
                raise WriterSchemaMismatchError(refused)
            self._check_reachable()
            if not self._budget.take():
                raise SchemaLookupsLimitedError(
                    "too many schema ids not yet known to this process at once; try again shortly"
                )
        schema = self._fetch_schema(schema_id)
        problem = unreadable_writer_schema(schema)
        with self._lock:
            if problem is None:
                self._found[schema_id] = schema
            else:
                self._refused[schema_id] = f"schema id {schema_id} {problem}"
        if problem is not None:
            raise WriterSchemaMismatchError(f"schema id {schema_id} {problem}")
        return schema

    def register_schema_full_response(
        self, subject_name: str, schema: Schema, normalize_schemas: bool = False
    ) -> RegisteredSchema:
        """Registers (or finds) `schema` under the subject; remembered, so a serializer that asks again for
        a subject already prepared makes no request."""
        key = (subject_name, schema)
        with self._lock:
            registered = self._registered.get(key)
            if registered is not None:
                return registered
            self._check_reachable()
        try:
            self.requests += 1
            registered = super().register_schema_full_response(subject_name, schema, normalize_schemas)
        except SchemaRegistryError as exc:
            if exc.http_status_code in (_CONFLICT, _UNPROCESSABLE):
                raise SchemaRegistrationError(
                    f"the schema registry refused our schema under {subject_name}", detail=str(exc)[:500]
                ) from None
            raise self._unavailable(exc) from None
        except Exception as exc:  # transport errors: refused, reset, timed out, TLS
            raise self._unavailable(exc) from None
        with self._lock:
            self._registered[key] = registered
        return registered

    def ensure_backward(self, subject: str) -> str:
        """The compatibility level in force on the subject (its own, else the registry's global one). Where
        that is NONE, BACKWARD is set on the subject, so that the registry refuses a change our readers
        could not read; any other level an operator chose is left as it is."""
        level = self._compatibility(subject)
        if level is None:  # no level of its own: the global one applies
            level = self._compatibility(None) or "NONE"
        if level != "NONE":
            return level
        try:
            self.requests += 1
            self.set_compatibility(subject, BACKWARD)
        except Exception as exc:
            raise self._unavailable(exc) from None
        return BACKWARD

    def _compatibility(self, subject: str | None) -> str | None:
        try:
            self.requests += 1
            return str(self.get_compatibility(subject)).upper()
        except SchemaRegistryError as exc:
            if exc.http_status_code == _NOT_FOUND:
                return None
            raise self._unavailable(exc) from None
        except Exception as exc:
            raise self._unavailable(exc) from None

    def _fetch_schema(self, schema_id: int) -> Schema:
        try:
            self.requests += 1
            # The base client's get_schema would keep every answer in its unbounded cache.
            response = self._rest_client.get(f"schemas/ids/{schema_id}")
            schema = RegisteredSchema.from_dict(response).schema
        except SchemaRegistryError as exc:
            if exc.http_status_code == _NOT_FOUND:
                with self._lock:
                    self._unknown[schema_id] = True
                raise UnknownSchemaIdError(schema_id) from None
            raise self._unavailable(exc) from None
        except Exception as exc:  # transport errors, and an answer that is not a schema
            raise self._unavailable(exc) from None
        return schema

    def _check_reachable(self) -> None:
        if self._clock() < self._unreachable_until:
            raise SchemaRegistryUnavailableError("the schema registry did not answer a moment ago")

    def _unavailable(self, exc: BaseException) -> SchemaRegistryUnavailableError:
        with self._lock:
            self._unreachable_until = self._clock() + UNREACHABLE_HOLD_S
        return SchemaRegistryUnavailableError(
            "the schema registry is unavailable", detail=f"{type(exc).__name__}: {exc}"[:500]
        )


def unreadable_writer_schema(schema: Schema) -> str | None:
    """Why a registered schema is not one we read records with, or None. Another schema type cannot be read
    as Avro; references would make one record cost a chain of further look-ups; fastavro reads a recursive
    type by recursion as deep as the bytes say (100 KB of them overflow the C stack: the process dies);
    and an array whose items encode in no bytes (null, a zero-size fixed, a record of such) lets a few bytes
    claim 2^62 items, read one by one: a record that never ends."""
    if (schema.schema_type or "AVRO") != "AVRO":
        return f"is a {schema.schema_type} schema, not Avro"
    if schema.references:
        return "has references; publish with a schema of its own (see schemas/README.md)"
    try:
        parsed = parse_schema(json.loads(schema.schema_str or ""), _write_hint=False)
    except Exception as exc:  # what the registry holds is as hostile as what a record says
        return f"does not parse as Avro ({type(exc).__name__})"
    # Expanded, every named type is inlined except a reference to itself: a name left is a recursion.
    return _walk(expand_schema(parsed), depth=0)


def _walk(schema: Any, *, depth: int) -> str | None:
    if depth > _MAX_SCHEMA_DEPTH:
        return f"nests deeper than {_MAX_SCHEMA_DEPTH} levels"
    if isinstance(schema, str):
        return None if schema in _PRIMITIVES else "is recursive (a record inside itself)"
    if isinstance(schema, list):
        return next(filter(None, (_walk(branch, depth=depth + 1) for branch in schema)), None)
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind == "array":
        if _takes_no_bytes(schema.get("items"), depth=0):
            return "has an array of items that take no bytes (null, or a record of nulls)"
        return _walk(schema.get("items"), depth=depth + 1)
    if kind == "map":
        return _walk(schema.get("values"), depth=depth + 1)
    if kind in ("record", "error"):
        fields = (field.get("type") for field in schema.get("fields", []))
        return next(filter(None, (_walk(field, depth=depth + 1) for field in fields)), None)
    if kind in ("enum", "fixed"):
        return None
    return _walk(kind, depth=depth + 1)


def _takes_no_bytes(schema: Any, *, depth: int) -> bool:
    """A union writes its branch index and an array, map, enum, string or number at least one byte."""
    if depth > _MAX_SCHEMA_DEPTH:
        return False
    if schema == "null":
        return True
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if kind == "null":
        return True
    if kind == "fixed":
        return schema.get("size") == 0
    if kind in ("record", "error"):
        return all(_takes_no_bytes(field.get("type"), depth=depth + 1) for field in schema.get("fields", []))
    return isinstance(kind, dict) and _takes_no_bytes(kind, depth=depth + 1)


class BoundedParsedSchemas(ParsedSchemaCache):
    """The deserializer's parsed writer schemas, least recently used out."""

    def __init__(self, *, max_size: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.parsed_schemas: LRUCache[Schema, Any] = LRUCache(maxsize=max_size)  # type: ignore[assignment]


class RegistryCodec(Generic[RecordT]):
    """One record type in the Confluent wire format: written with our newest schema, registered under the
    topic's subject; read with whatever writer schema the id names, resolved to our newest."""

    def __init__(self, *, codec: RecordCodec[RecordT], client: RegistryClient) -> None:
        self._codec: RecordCodec[RecordT] = codec
        self._client = client
        self.schema = Schema(codec.writer.json_text(), schema_type="AVRO")
        self._serializer = AvroSerializer(
            client,
            self.schema,
            conf={"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy},
        )
        # No SerializationContext is passed when reading: without one, the deserializer runs no rules a
        # registered schema might carry and makes no look-ups beyond the writer schema's.
        self._deserializer = AvroDeserializer(
            client, self.schema, conf={"schema.id.deserializer": self._schema_id_from_prefix}
        )
        # Its own cache of parsed writer schemas would grow with every schema a record ever named.
        self._deserializer._parsed_schemas = BoundedParsedSchemas(max_size=client.max_schemas)
        self._reading = threading.local()

    def prepare(self, topic: str) -> int:
        """Before the first record: BACKWARD on the topic's subject (unless it has a level), and our schema
        registered there, so that writing makes no request. Returns the schema's id."""
        subject = subject_of(topic)
        self._client.ensure_backward(subject)
        registered = self._client.register_schema_full_response(subject, self.schema)
        return int(registered.schema_id or 0)

    def encode(self, record: RecordT, *, topic: str) -> bytes:
        """Raises the registry's errors (SchemaRegistrationError, SchemaRegistryUnavailableError) when the
        topic's subject is not prepared and cannot be; no request once it is."""
        value = self._serializer(
            self._codec.to_datum(record), SerializationContext(topic, MessageField.VALUE)
        )
        assert value is not None
        return bytes(value)

    def decode(self, data: bytes) -> RecordT:
        if len(data) <= CONFLUENT_HEADER_SIZE:
            raise TruncatedRecordError(
                f"registry-framed record is {len(data)} bytes, no body after its header"
            )
        name = self._codec.writer.name
        try:
            datum = self._deserializer(data, None)
        except CaptionerError:
            raise
        except SchemaResolutionError as exc:
            raise WriterSchemaMismatchError(
                f"the writer schema does not resolve to {name}", detail=str(exc)[:500]
            ) from exc
        except (EOFError, StopIteration, IndexError) as exc:
            raise TruncatedRecordError(f"{name} body ends early ({len(data)} bytes)") from exc
        except Exception as exc:  # fastavro raises many types on hostile bodies
            raise RecordDecodeError(
                f"{name} body is not valid Avro", detail=f"{type(exc).__name__}: {exc}"[:500]
            ) from exc
        payload: io.BytesIO = self._reading.payload
        if payload.tell() != len(data):
            raise TrailingBytesError(f"{len(data) - payload.tell()} trailing bytes after record")
        if not isinstance(datum, dict):
            raise WriterSchemaMismatchError(f"the writer schema is not a record like {name}")
        try:
            return self._codec.from_datum(datum)
        except (TypeError, ValueError) as exc:
            raise RecordDecodeError(f"{name} has a value outside its type") from exc

    def _schema_id_from_prefix(self, data: bytes, _ctx: object, schema_id: Any) -> io.BytesIO:
        """The id from the 5-byte prefix only (never from headers, which a publisher sets too); the payload
        is kept so that decode can tell whether the body was read to its end."""
        payload = io.BytesIO(data)
        schema_id.from_bytes(payload)
        self._reading.payload = payload
        return payload


class FramedCodec(Generic[RecordT]):
    """Reads a record in either framing; writes the registry's where one is configured, else single-object.
    Without a registry a registry-framed record reads as not single-object, as it always did."""

    def __init__(
        self, *, codec: RecordCodec[RecordT], registry: RegistryCodec[RecordT] | None = None
    ) -> None:
        self.codec: RecordCodec[RecordT] = codec
        self.registry: RegistryCodec[RecordT] | None = registry

    @property
    def framing(self) -> Framing:
        return Framing.SINGLE_OBJECT if self.registry is None else Framing.CONFLUENT

    def decode(self, data: bytes) -> RecordT:
        return self.decode_framed(data)[0]

    def decode_framed(self, data: bytes) -> tuple[RecordT, Framing]:
        if self.registry is not None and framing_of(data) is Framing.CONFLUENT:
            return self.registry.decode(data), Framing.CONFLUENT
        return self.codec.decode(data), Framing.SINGLE_OBJECT

    def encode(self, record: RecordT, *, topic: str, framing: Framing | None = None) -> bytes:
        """In `framing` (default: this process's own); a registry framing asked for without a registry
        falls back to single-object."""
        if self.registry is not None and (framing or self.framing) is Framing.CONFLUENT:
            return self.registry.encode(record, topic=topic)
        return self.codec.encode(record)

    def writer(self, topic: str) -> Callable[[RecordT], bytes]:
        """encode for one topic in this process's framing."""
        return lambda record: self.encode(record, topic=topic)

    def prepare(self, topic: str) -> None:
        if self.registry is not None:
            self.registry.prepare(topic)


@dataclass(frozen=True)
class RecordCodecs:
    """The three record types' codecs of one process."""

    requests: FramedCodec[CaptionRequest]
    replies: FramedCodec[CaptionReply]
    cache_entries: FramedCodec[CaptionCacheEntry]
    client: RegistryClient | None = None

    @property
    def framing(self) -> Framing:
        return self.requests.framing

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


SINGLE_OBJECT_CODECS = RecordCodecs(
    requests=FramedCodec(codec=REQUEST_CODEC),
    replies=FramedCodec(codec=REPLY_CODEC),
    cache_entries=FramedCodec(codec=CACHE_ENTRY_CODEC),
)


def registry_codecs(client: RegistryClient) -> RecordCodecs:
    return RecordCodecs(
        requests=FramedCodec(codec=REQUEST_CODEC, registry=RegistryCodec(codec=REQUEST_CODEC, client=client)),
        replies=FramedCodec(codec=REPLY_CODEC, registry=RegistryCodec(codec=REPLY_CODEC, client=client)),
        cache_entries=FramedCodec(
            codec=CACHE_ENTRY_CODEC, registry=RegistryCodec(codec=CACHE_ENTRY_CODEC, client=client)
        ),
        client=client,
    )
