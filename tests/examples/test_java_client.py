"""The Java example client (examples/java), built with Maven and run against the real broker: the contract
in schemas/README.md, met by Apache Avro's and Apache Kafka's own Java libraries."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Message, Producer

from core.kafka_config import producer_config
from core.settings import KafkaSettings, TopicSettings
from schemas import REQUEST_CODEC, CaptionRequest
from tests.conftest import StartWorker
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import read_until
from tests.support.repo import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "java"
MAIN_CLASS = "io.captioner.example.CaptionClient"


@dataclass(frozen=True)
class JavaClient:
    classpath: str

    def run(self, *args: str, stdin: str = "", timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        java = shutil.which("java")
        assert java, "java is needed to run examples/java"
        return subprocess.run(
            [java, "-cp", self.classpath, MAIN_CLASS, *args],
            input=stdin,
            capture_output=True,
            encoding="utf-8",
            timeout=timeout_s,
            check=False,
        )

    def output(self, *args: str, stdin: str = "") -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def java_client(tmp_path_factory: pytest.TempPathFactory) -> JavaClient:
    """`mvn package` with every build output in a temporary directory, none inside the repository."""
    mvn = shutil.which("mvn")
    if mvn is None:
        pytest.fail("Maven (mvn) and a JDK 17+ are needed to build examples/java; install them (apt: maven)")
    build = tmp_path_factory.mktemp("java-example")
    pom = EXAMPLE / "pom.xml"
    result = subprocess.run(
        [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom), "package", f"-DbuildDir={build}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"mvn package failed:\n{result.stdout}\n{result.stderr}"
    dependencies = (build / "classpath.txt").read_text().strip()
    return JavaClient(f"{build / 'classes'}:{dependencies}")


def test_java_client_gets_the_reference_title(
    java_client: JavaClient,
    topics: TopicSettings,
    start_worker: StartWorker,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    start_worker()
    image = make_image_bytes("JPEG", seed=11)
    picture = tmp_path / "picture.jpg"
    picture.write_bytes(image)

    result = java_client.run(
        kafka_bootstrap, topics.requests, topics.replies, str(picture), "90", timeout_s=150
    )

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    reply = json.loads(line)
    assert reply["status"] == "SUCCEEDED"
    assert reply["title"] == reference_captioner(tiny_model_dir).caption(image)
    assert reply["model"] == tiny_model_dir.name  # the public id, never a server path
    [sent] = read_until(kafka_bootstrap, topics.requests, lambda records: len(records) >= 1)
    assert sent.key == reply["correlation_id"].encode()
    request = REQUEST_CODEC.decode(sent.value)
    assert (request.image, request.content_type, request.reply_topic) == (image, "image/jpeg", topics.replies)


def test_java_client_times_out_without_a_worker(
    java_client: JavaClient, topics: TopicSettings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    picture = tmp_path / "picture.png"
    picture.write_bytes(make_image_bytes("PNG"))

    result = java_client.run(kafka_bootstrap, topics.requests, topics.replies, str(picture), "3")

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "no final reply" in result.stderr


def _millis(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


@pytest.mark.parametrize(
    "request_fields",
    [
        pytest.param({"reply_partition": None, "max_new_tokens": None}, id="nulls"),
        pytest.param({"reply_partition": 3, "max_new_tokens": 7}, id="every-field"),
    ],
)
def test_java_encoder_writes_python_codec_bytes(
    java_client: JavaClient, tmp_path: Path, request_fields: dict[str, int | None]
) -> None:
    image = make_image_bytes("PNG", seed=3)
    picture = tmp_path / "picture.png"
    picture.write_bytes(image)
    request = CaptionRequest(
        correlation_id="job-1:a_b.c",
        image=image,
        content_type="image/png",
        reply_topic="caller.replies",
        deadline=_millis(1_767_225_600_123),
        created_at=_millis(1_767_225_570_045),
        **request_fields,
    )

    encoded = java_client.output(
        "encode",
        request.correlation_id,
        str(picture),
        request.content_type,
        request.reply_topic,
        _nullable(request_fields["reply_partition"]),
        "1767225600123",
        "1767225570045",
        _nullable(request_fields["max_new_tokens"]),
    )

    assert bytes.fromhex(encoded.strip()) == REQUEST_CODEC.encode(request)


def _nullable(value: int | None) -> str:
    return "null" if value is None else str(value)


def test_a_key_lands_on_the_partition_javas_producer_picks(
    java_client: JavaClient, topics: TopicSettings
) -> None:
    keys = [uuid.uuid4().hex for _ in range(48)] + ["a", "job-1", "ключ-λ"]

    python_side = _partitions_python_picks(topics, keys)
    java_side = _partitions_java_picks(java_client, topics.request_partitions, keys)

    assert python_side == java_side, (
        "the Python producers must use librdkafka's murmur2_random partitioner (Kafka's Java default): "
        "a keyed record must land on the same partition whichever client writes it"
    )


def _partitions_python_picks(topics: TopicSettings, keys: Sequence[str]) -> dict[str, int]:
    producer = Producer(producer_config(KafkaSettings(), topics, client_id="test-partitioner"))
    picked: dict[str, int] = {}

    def delivered(error: object, message: Message) -> None:
        assert error is None, error
        key, partition = message.key(), message.partition()
        assert isinstance(key, bytes) and partition is not None
        picked[key.decode()] = partition

    for key in keys:
        producer.produce(topics.requests, key=key.encode(), value=b"", on_delivery=delivered)
    assert producer.flush(30) == 0, "records were not delivered"
    return picked


def _partitions_java_picks(java_client: JavaClient, partitions: int, keys: Sequence[str]) -> dict[str, int]:
    lines = java_client.output("partition", str(partitions), stdin="\n".join(keys)).splitlines()
    return {key: int(partition) for key, partition in (line.rsplit(" ", 1) for line in lines)}
