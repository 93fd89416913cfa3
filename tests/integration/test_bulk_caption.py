"""`captioner caption` against a real broker and real `captioner api` / `captioner worker` processes, over
HTTP and straight through Kafka."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from core.settings import TopicSettings
from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.services import CAPTIONER, service_env
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 120


def album(root: Path) -> dict[str, bytes]:
    """Three pictures, one file that is not an image but is named like one, and a text file."""
    folder = root / "album"
    folder.mkdir()
    images = {f"photo-{seed}.png": make_image_bytes("PNG", seed=seed) for seed in range(3)}
    for name, data in images.items():
        (folder / name).write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not sent")
    return images


def through(via: str, start_worker: StartWorker, start_api: StartApi) -> list[str]:
    """Starts the service one route needs; returns the command-line arguments that choose it."""
    start_worker()
    if via == "http":
        return ["--via", "http", "--api-url", start_api().url]
    return ["--via", "kafka"]


def rows_by_name(output: Path) -> dict[str, dict[str, str]]:
    return {Path(row["path"]).name: row for row in map(json.loads, output.read_text().splitlines())}


def bulk_reply_topics(env: dict[str, str], topics: TopicSettings) -> list[str]:
    admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    names = admin.list_topics(timeout=10).topics
    return [name for name in names if name.startswith(f"{topics.replies}.bulk.")]


@pytest.mark.parametrize("via", ["http", "kafka"])
def test_every_image_is_captioned_and_the_bad_one_listed(
    via: str,
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    env: dict[str, str],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    route = through(via, start_worker, start_api)
    images = album(tmp_path)
    output = tmp_path / "titles.jsonl"

    done = subprocess.run(
        [CAPTIONER, "caption", str(tmp_path / "album"), "--output", str(output), *route],
        env=service_env(env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )

    assert done.returncode == 1, done.stderr  # one file is not an image
    results = rows_by_name(output)
    assert set(results) == {*images, "broken.jpg"}
    assert results["broken.jpg"]["status"] == "failed"
    assert results["broken.jpg"]["error"] == "invalid_image"
    reference = reference_captioner(tiny_model_dir)
    for name, data in images.items():
        assert results[name]["status"] == "ok", results[name]
        assert results[name]["title"] == reference.caption(data)
    assert f"{tmp_path / 'album' / 'broken.jpg'}: invalid_image:" in done.stderr
    assert "3 captioned, 1 failed" in done.stderr
    assert bulk_reply_topics(env, topics) == []  # the run's own reply topic is gone


@pytest.mark.parametrize("via", ["http", "kafka"])
def test_a_result_is_in_the_output_before_the_last_image_is_sent(
    via: str,
    start_worker: StartWorker,
    start_api: StartApi,
    topics: TopicSettings,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    route = through(via, start_worker, start_api)
    images = album(tmp_path)
    paths = [tmp_path / "album" / name for name in images]
    output = tmp_path / "titles.csv"
    run = subprocess.Popen(
        [CAPTIONER, "caption", "-", "--output", str(output), *route],
        env=service_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdin is not None
        run.stdin.write(f"{paths[0]}\n")
        run.stdin.flush()

        # The other paths are not even named yet: the first result must be written on its own.
        wait_until(
            lambda: len(output.read_text().splitlines()) == 2 if output.exists() else False,
            timeout_s=60,
            message="the first result in the output",
        )
        first = output.read_text().splitlines()[1]
        run.stdin.write("".join(f"{path}\n" for path in paths[1:]))
        run.stdin.close()
        code = run.wait(RUN_TIMEOUT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()

    assert first.startswith(f"{paths[0]},ok,")
    assert code == 0, run.stderr.read() if run.stderr else ""
    lines = output.read_text().splitlines()
    assert lines[0] == "path,status,title,id,error,message"
    assert len(lines) == 1 + len(images)
