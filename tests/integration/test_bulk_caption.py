"""`captioner caption` against a real broker and real `captioner api` / `captioner worker` processes, over
HTTP and straight through Kafka."""

from __future__ import annotations

import base64
import csv
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from core.settings import TopicSettings
from tests.conftest import StartApi, StartWorker
from tests.support.images import make_image_bytes, reference_captioner
from tests.support.kafka import end_offsets
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
    assert lines[0] == "path,status,title,id,error,message,path_b64"
    assert len(lines) == 1 + len(images)


# Names as a file system holds them: Latin-1 bytes (not UTF-8), UTF-8 beyond ASCII, an escape sequence.
ODD_NAMES = [b"caf\xe9.png", "snow\u2603.png".encode(), b"red\x1b[31m\x9b2J.png"]
API_KEY = "captioner-test-key-" + "k" * 24


def odd_album(root: Path) -> dict[bytes, bytes]:
    """name -> image bytes, in a folder whose names are bytes, not text."""
    folder = root / "odd"
    folder.mkdir()
    images = {name: make_image_bytes("PNG", seed=seed) for seed, name in enumerate(ODD_NAMES)}
    for name, data in images.items():
        Path(os.fsdecode(bytes(folder) + b"/" + name)).write_bytes(data)
    return images


def name_bytes(row: dict[str, str]) -> bytes:
    """docs/bulk.md's rule for a consumer: path_b64 where it is set, else path as UTF-8."""
    return base64.b64decode(row["path_b64"]) if row.get("path_b64") else row["path"].encode()


def titles_by_name(rows: object) -> dict[bytes, str]:
    return {name_bytes(row).rsplit(b"/", 1)[1]: row["title"] for row in rows}  # type: ignore[attr-defined]


def run_caption(*args: str, env: dict[str, str], **extra_env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CAPTIONER, "caption", *args],
        env=service_env(env, **extra_env),
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
    )


@pytest.mark.parametrize("via", ["http", "kafka"])
def test_any_file_name_comes_back_as_its_bytes_to_a_file_stdout_and_resume(
    via: str,
    start_worker: StartWorker,
    start_api: StartApi,
    env: dict[str, str],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    route = through(via, start_worker, start_api)
    images = odd_album(tmp_path)
    folder, output = str(tmp_path / "odd"), tmp_path / "titles.jsonl"
    reference = reference_captioner(tiny_model_dir)
    expected = {name: reference.caption(data) for name, data in images.items()}

    to_file = run_caption(folder, "-o", str(output), *route, env=env)
    written = output.read_bytes()
    resumed = run_caption(folder, "-o", str(output), "--resume", *route, env=env)
    # A strict UTF-8 stdout, as a pipe in a UTF-8 locale is.
    to_stdout = run_caption(folder, "--format", "csv", *route, env=env, PYTHONIOENCODING="utf-8:strict")

    assert to_file.returncode == 0, to_file.stderr.decode(errors="replace")
    assert titles_by_name(map(json.loads, written.decode("utf-8").splitlines())) == expected
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")
    assert b"0 captioned, 0 failed, 3 skipped" in resumed.stderr
    assert output.read_bytes() == written
    assert to_stdout.returncode == 0, to_stdout.stderr.decode(errors="replace")
    assert titles_by_name(csv.DictReader(to_stdout.stdout.decode("utf-8").splitlines())) == expected
    assert b"\x1b" not in to_file.stderr + resumed.stderr + to_stdout.stderr


def test_the_api_key_is_sent_from_the_option_or_the_setting(
    start_worker: StartWorker, start_api: StartApi, env: dict[str, str], tmp_path: Path
) -> None:
    start_worker()
    api = start_api(CAPTIONER_API_KEYS=API_KEY)
    images = album(tmp_path)
    image = str(tmp_path / "album" / next(iter(images)))

    from_option = run_caption(image, "--api-url", api.url, "--api-key", API_KEY, env=env)
    from_setting = run_caption(image, "--api-url", api.url, env=env, CAPTIONER_API_KEY=API_KEY)
    wrong = run_caption(image, "--api-url", api.url, "--api-key", API_KEY + "x", env=env)
    without = run_caption(image, "--api-url", api.url, env=env)

    for done in (from_option, from_setting):
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert json.loads(done.stdout)["status"] == "ok"
    for done in (wrong, without):
        assert done.returncode == 1
        assert json.loads(done.stdout)["error"] == "unauthorized"
    runs = (from_option, from_setting, wrong, without)
    assert not any(API_KEY.encode() in done.stdout + done.stderr for done in runs)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_kafka_run_deletes_its_reply_topic_and_counts_the_jobs_it_left(
    stop: signal.Signals, topics: TopicSettings, env: dict[str, str], tmp_path: Path
) -> None:
    """No worker: every job the run sends stays on the request topic, unanswered."""
    images = album(tmp_path)
    sent = len(images) + 1  # broken.jpg is sent too: only a worker can tell it is no image
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]

    def queued() -> int:
        try:
            return sum(end_offsets(bootstrap, topics.requests, topics.request_partitions).values())
        except KafkaException:  # the topic's leaders are still being elected
            return -1

    run = subprocess.Popen(
        [CAPTIONER, "caption", str(tmp_path / "album"), "--via", "kafka", "-o", str(tmp_path / "out.jsonl")],
        env=service_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: queued() == sent, timeout_s=60, message=lambda: f"{queued()} jobs on the topic")
        run.send_signal(stop)
        _out, err = run.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()

    assert run.returncode == 130, err
    assert "stopped early (interrupted)" in err
    assert f"{sent} images were still in flight on the request topic" in err
    assert "Traceback" not in err
    assert bulk_reply_topics(env, topics) == []
    assert queued() == sent  # nothing was sent after the count
