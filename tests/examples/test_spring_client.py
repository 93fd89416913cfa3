"""The Spring Boot example (examples/spring), built with Maven and run against the real broker and a real
worker: `ReplyingKafkaTemplate.sendAndReceive` gets its reply with nothing captioner-specific on the reply
path, because the worker honours the template's reply headers and copies kafka_correlationId back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.settings import TopicSettings
from tests.conftest import StartWorker
from tests.support.examples import Program, maven_program
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="session")
def spring_app(tmp_path_factory: pytest.TempPathFactory) -> Program:
    return maven_program(
        "spring", "io.captioner.spring.CaptionApp", tmp_path_factory.mktemp("spring-example")
    )


def caption(
    app: Program, bootstrap: str, topics: TopicSettings, picture: Path, *options: str
) -> dict[str, object]:
    result = app.run(
        f"--spring.kafka.bootstrap-servers={bootstrap}",
        f"--captioner.request-topic={topics.requests}",
        f"--captioner.reply-topic={topics.replies}",
        f"--captioner.image={picture}",
        "--captioner.timeout-s=90",
        *options,
        timeout_s=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [line] = result.stdout.splitlines()
    reply: dict[str, object] = json.loads(line)
    return reply


def test_send_and_receive_gets_the_reference_title(
    spring_app: Program,
    topics: TopicSettings,
    start_worker: StartWorker,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    start_worker()
    image = make_image_bytes("JPEG", seed=12)
    picture = tmp_path / "picture.jpg"
    picture.write_bytes(image)
    expected = reference_captioner(tiny_model_dir).caption(image)

    by_group = caption(spring_app, kafka_bootstrap, topics, picture)
    one_partition = caption(spring_app, kafka_bootstrap, topics, picture, "--captioner.reply-partition=2")

    for reply in (by_group, one_partition):
        assert (reply["status"], reply["title"]) == ("SUCCEEDED", expected)
    requests = read_until(kafka_bootstrap, topics.requests, lambda records: len(records) >= 2)
    [first, second] = sorted(
        requests, key=lambda record: record.key != str(by_group["correlation_id"]).encode()
    )
    assert first.headers["kafka_replyTopic"] == topics.replies.encode()
    assert "kafka_replyPartition" not in first.headers  # the group's partitions: the key chooses
    assert second.headers["kafka_replyPartition"] == (2).to_bytes(4, "big")
    replies = read_until(kafka_bootstrap, topics.replies, lambda records: len(records) >= 2)
    partitions = {reply.headers["kafka_correlationId"]: reply.partition for reply in replies}
    assert first.headers["kafka_correlationId"] in partitions
    assert partitions[second.headers["kafka_correlationId"]] == 2
