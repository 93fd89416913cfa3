"""A real schema registry for the tests: Apicurio Registry from infra/registry (its Confluent-compatible API),
started fresh for the session on the broker's port + 10, with Apicurio's own default compatibility (NONE),
so that only the services' own per-subject BACKWARD makes it refuse an incompatible schema. And a publisher
that frames records the way another system's Confluent serializer does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionReply, CaptionRequest
from tests.support.broker import TEST_BROKER_PORT

REPO = Path(__file__).resolve().parents[2]
REGISTRY_SCRIPT = REPO / "infra" / "registry" / "registry.sh"
TEST_REGISTRY_PORT = TEST_BROKER_PORT + 20  # +10 is the secured broker


@dataclass(frozen=True)
class LocalRegistry:
    url: str
    pid: int

    @contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP: the registry's port still takes connections, and nothing answers (a hung registry)."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)


@contextmanager
def local_registry() -> Iterator[LocalRegistry]:
    prefix = f"captioner-test-registry-{TEST_REGISTRY_PORT}-"
    for left_behind in Path(tempfile.gettempdir()).glob(prefix + "*"):  # by an aborted run
        _stop(left_behind)
    state = Path(tempfile.mkdtemp(prefix=prefix))
    started = subprocess.run([str(REGISTRY_SCRIPT), "start"], env=_env(state), capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"local schema registry did not start:\n{started.stdout}\n{started.stderr}")
    try:
        pid = int((state / "registry.pid").read_text())
        yield LocalRegistry(url=started.stdout.strip().splitlines()[-1], pid=pid)
    finally:
        _stop(state)


def _env(state: Path) -> dict[str, str]:
    return os.environ | {
        "REGISTRY_LOCAL_PORT": str(TEST_REGISTRY_PORT),
        "REGISTRY_LOCAL_STATE": str(state),
        "REGISTRY_LOCAL_COMPATIBILITY": "NONE",
    }


def _stop(state: Path) -> None:
    pid_file = state / "registry.pid"
    if pid_file.exists():  # a paused registry would not hear SIGTERM
        with suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGCONT)
    subprocess.run([str(REGISTRY_SCRIPT), "stop"], env=_env(state), check=False)
    shutil.rmtree(state, ignore_errors=True)


def request_schema_text(**extra_field: Any) -> str:
    """Our request schema as a publisher registers it; with `extra_field`, a field added to its end."""
    raw = json.loads(REQUEST_CODEC.writer.json_text())
    if extra_field:
        raw["fields"].append(extra_field)
    return json.dumps(raw)


class Publisher:
    """Another system's producer side: confluent-kafka's own AvroSerializer over a plain client, with
    auto-registration, under TopicNameStrategy."""

    def __init__(self, url: str) -> None:
        self.client = SchemaRegistryClient({"url": url})

    def register(self, topic: str, schema_text: str) -> int:
        return self.client.register_schema(f"{topic}-value", Schema(schema_text, "AVRO"))

    def request_value(
        self, request: CaptionRequest, *, topic: str, schema_text: str | None = None, **extra: Any
    ) -> bytes:
        serializer = AvroSerializer(
            self.client,
            schema_text or request_schema_text(),
            conf={"subject.name.strategy": topic_subject_name_strategy},
        )
        datum = REQUEST_CODEC.to_datum(request) | extra
        value = serializer(datum, SerializationContext(topic, MessageField.VALUE))
        assert value is not None
        return bytes(value)

    def reply(self, value: bytes) -> CaptionReply:
        """A reply as a Confluent deserializer reads it."""
        datum = AvroDeserializer(self.client)(value, None)
        assert isinstance(datum, dict)
        return REPLY_CODEC.from_datum(datum)
