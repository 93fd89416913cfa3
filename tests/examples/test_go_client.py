"""The Go example client (examples/go, franz-go), built with `go build` and run against the real broker and
a real worker: the single-object framing written by hand from schemas/README.md's canonical forms."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.settings import TopicSettings
from schemas import REQUEST_CODEC, CaptionRequest
from tests.conftest import StartWorker
from tests.support.examples import Program, go_program
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


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
