"""The Go example client (examples/go, franz-go), built with `go build` and run against the real broker and
a real worker: the single-object framing written by hand from schemas/README.md's canonical forms, and with
-registry the Schema Registry's framing (franz-go's sr package) against a real Apicurio Registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer

from core.settings import TopicSettings
from schemas import REPLY_CODEC, REQUEST_CODEC, CaptionRequest, ReplyStatus
from tests.conftest import StartWorker
from tests.support.examples import Program, go_program
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import Record, publish, read_until
from tests.support.registry import LocalRegistry, Publisher
from tests.support.repo import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

CONFLUENT_MARKER = b"\x00"


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Program:
    return go_program("go", tmp_path_factory.mktemp("go-example"))


def test_go_client_gets_the_reference_title(
    go_client: Program,
    topics: TopicSettings,
    start_worker: StartWorker,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    start_worker()
    image = make_image_bytes("PNG", seed=13)
    picture = tmp_path / "picture.png"
    picture.write_bytes(image)

    result = go_client.run(
        kafka_bootstrap, topics.requests, topics.replies, str(picture), "90", timeout_s=150
    )

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    reply = json.loads(line)
    assert (reply["status"], reply["title"]) == (
        "SUCCEEDED",
        reference_captioner(tiny_model_dir).caption(image),
    )
    [sent] = read_until(kafka_bootstrap, topics.requests, lambda records: len(records) >= 1)
    assert sent.key == reply["correlation_id"].encode()
    assert REQUEST_CODEC.decode(sent.value).image == image


def test_go_client_with_a_registry_publishes_and_reads_the_registry_framing(
    go_client: Program,
    topics: TopicSettings,
    start_worker: StartWorker,
    kafka_bootstrap: str,
    schema_registry: LocalRegistry,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    start_worker(CAPTIONER_SCHEMA_REGISTRY_URL=schema_registry.url)
    publisher = Publisher(schema_registry.url)
    image = make_image_bytes("PNG", seed=14)
    picture = tmp_path / "picture.png"
    picture.write_bytes(image)

    result = go_client.run(
        "-registry",
        schema_registry.url,
        kafka_bootstrap,
        topics.requests,
        topics.replies,
        str(picture),
        "90",
        timeout_s=150,
    )

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    printed = json.loads(line)
    expected = reference_captioner(tiny_model_dir).caption(image)
    assert (printed["status"], printed["title"]) == ("SUCCEEDED", expected)
    [sent] = read_until(kafka_bootstrap, topics.requests, lambda records: len(records) >= 1)
    assert sent.value[:1] == CONFLUENT_MARKER
    registered = publisher.client.get_latest_version(f"{topics.requests}-value")
    assert int.from_bytes(sent.value[1:5], "big") == registered.schema_id
    avsc = (REPO / "schemas" / "v1" / "caption_request.avsc").read_text()
    assert json.loads(registered.schema.schema_str or "") == json.loads(avsc)
    datum = AvroDeserializer(publisher.client)(sent.value, None)
    assert isinstance(datum, dict)
    assert REQUEST_CODEC.from_datum(datum).correlation_id == printed["correlation_id"]
    assert REQUEST_CODEC.from_datum(datum).image == image
    final = final_reply(kafka_bootstrap, topics.replies, printed["correlation_id"], publisher)
    assert final.value[:1] == CONFLUENT_MARKER
    assert publisher.reply(final.value).title == expected


def test_go_client_with_a_registry_skips_registry_framed_records_it_cannot_read(
    go_client: Program,
    topics: TopicSettings,
    start_worker: StartWorker,
    kafka_bootstrap: str,
    schema_registry: LocalRegistry,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    publisher = Publisher(schema_registry.url)
    image = make_image_bytes("PNG", seed=15)
    picture = tmp_path / "picture.png"
    picture.write_bytes(image)
    arguments = (kafka_bootstrap, topics.requests, topics.replies, str(picture), "90")

    with go_client.started("-registry", schema_registry.url, *arguments) as client:
        # Once its request is out, the client reads every reply partition from where it ended before:
        # these come first, the worker (started after them) answers after them.
        [sent] = read_until(kafka_bootstrap, topics.requests, lambda records: len(records) >= 1)
        reply_id = publisher.register(topics.replies, REPLY_CODEC.writer.json_text())
        unreadable = [
            b"\x00\x00",  # shorter than its header
            b"\x00" + (2**31 - 11).to_bytes(4, "big") + b"\x02ab",  # an id the registry does not have
            sent.value,  # a schema the registry has that is not a CaptionReply
            b"\x00" + reply_id.to_bytes(4, "big") + b"\xff" * 12,  # the reply schema, a body not Avro
        ]
        for partition in range(topics.reply_partitions):
            for value in unreadable:
                publish(kafka_bootstrap, topics.replies, value, partition=partition)
        start_worker(CAPTIONER_SCHEMA_REGISTRY_URL=schema_registry.url)
        stdout, stderr = client.communicate(timeout=150)

    assert client.returncode == 0, stderr
    reply = json.loads(stdout)
    expected = reference_captioner(tiny_model_dir).caption(image)
    assert (reply["status"], reply["title"]) == ("SUCCEEDED", expected)
    skipped = stderr.count("skipped a record that is not a reply")
    assert skipped == len(unreadable) * topics.reply_partitions, stderr


def final_reply(bootstrap: str, topic: str, correlation_id: str, publisher: Publisher) -> Record:
    """The reply record that ends the job, in either framing."""

    def ends(record: Record) -> bool:
        framed = record.value[:1] == CONFLUENT_MARKER
        reply = publisher.reply(record.value) if framed else REPLY_CODEC.decode(record.value)
        return reply.correlation_id == correlation_id and reply.status is not ReplyStatus.RETRYING

    records = read_until(bootstrap, topic, lambda seen: any(ends(record) for record in seen))
    return next(record for record in records if ends(record))


def test_go_encoder_writes_python_codec_bytes(go_client: Program, tmp_path: Path) -> None:
    image = make_image_bytes("JPEG", seed=3)
    picture = tmp_path / "picture.jpg"
    picture.write_bytes(image)
    request = CaptionRequest(
        correlation_id="job-1:a_b.c",
        image=image,
        content_type="image/jpeg",
        reply_topic="caller.replies",
        deadline=datetime.fromtimestamp(1_767_225_600.123, UTC),
        created_at=datetime.fromtimestamp(1_767_225_570.045, UTC),
    )

    result = go_client.run(
        "encode",
        request.correlation_id,
        str(picture),
        "image/jpeg",
        "caller.replies",
        "1767225600123",
        "1767225570045",
    )

    assert result.returncode == 0, result.stderr
    assert bytes.fromhex(result.stdout.strip()) == REQUEST_CODEC.encode(request)
