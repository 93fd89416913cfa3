"""The run: results written as they come, a bounded number in flight, bad files listed and the run
carried on past them; the command's output, failure list and exit code."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from captioner.bulk.command import report
from captioner.bulk.files import ImageFile
from captioner.bulk.results import Result
from captioner.bulk.run import MAX_LISTED_FAILURES, Summary, caption_all
from captioner.cli import app
from tests.captioner.bulk.conftest import FakeApi

DEADLINE_S = 10.0


class Recorded:
    """A sink that keeps what it is given and can tell the event loop when something arrives."""

    def __init__(self, on_write: Callable[[Result], None] = lambda _result: None) -> None:
        self.results: list[Result] = []
        self._on_write = on_write

    def write(self, result: Result) -> None:
        self.results.append(result)
        self._on_write(result)


class Titles:
    """Captions an image with its own bytes; b"bad..." fails as the service would say."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.held: set[bytes] = set()
        self.hold_until_in_flight = 1
        self.full = asyncio.Event()

    async def caption(self, image: ImageFile) -> Result:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if image.data in self.held:
                await self.release.wait()
            if self.in_flight >= self.hold_until_in_flight:
                self.full.set()
            await self.full.wait()
            if image.data.startswith(b"bad"):
                return Result.failed(image.path, error="invalid_image", message="not an image")
            return Result.captioned(image.path, title=image.data.decode(), id=None)
        finally:
            self.in_flight -= 1


def files(root: Path, contents: dict[str, bytes]) -> list[Path]:
    for name, data in contents.items():
        (root / name).write_bytes(data)
    return [root / name for name in contents]


async def test_a_result_is_written_while_other_images_are_still_waiting(tmp_path: Path) -> None:
    backend = Titles()
    backend.held.add(b"slow")
    loop = asyncio.get_running_loop()
    sink = Recorded(on_write=lambda result: loop.call_soon_threadsafe(backend.release.set))
    paths = files(tmp_path, {"slow.jpg": b"slow", "fast.jpg": b"fast"})

    # Deadlocks (and so times out) if results were only written once every image is answered.
    summary = await asyncio.wait_for(
        caption_all(iter(paths), backend=backend, sink=sink, concurrency=2, max_bytes=100), DEADLINE_S
    )

    assert [result.title for result in sink.results] == ["fast", "slow"]
    assert summary.captioned == 2


async def test_a_new_path_is_taken_only_when_one_of_the_concurrency_slots_is_free(tmp_path: Path) -> None:
    backend = Titles()
    backend.hold_until_in_flight = 3  # the first images wait until three are in flight
    written: list[Result] = []
    outstanding_when_asked: list[int] = []

    def listing() -> Iterator[Path]:
        for n, path in enumerate(files(tmp_path, {f"{n}.jpg": b"x%d" % n for n in range(12)})):
            outstanding_when_asked.append(n - len(written))
            yield path

    summary = await asyncio.wait_for(
        caption_all(listing(), backend=backend, sink=Recorded(written.append), concurrency=3, max_bytes=100),
        DEADLINE_S,
    )

    assert summary.captioned == 12
    assert backend.most_in_flight == 3
    # Each slot asks for its next path only after writing its last result.
    assert max(outstanding_when_asked) == 2, outstanding_when_asked


async def test_bad_files_are_listed_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    paths = [
        *files(tmp_path, {"good.jpg": b"good", "bad.jpg": b"bad bytes", "huge.jpg": b"h" * 101}),
        tmp_path / "missing.jpg",
        tmp_path / "folder.jpg",
        *files(tmp_path, {"last.jpg": b"last"}),
    ]
    sink = Recorded()

    summary = await caption_all(iter(paths), backend=Titles(), sink=sink, concurrency=2, max_bytes=100)

    assert (summary.captioned, summary.failed) == (2, 4)
    errors = {Path(result.path).name: result.error for result in summary.failures}
    assert errors == {
        "bad.jpg": "invalid_image",
        "huge.jpg": "payload_too_large",
        "missing.jpg": "unreadable",
        "folder.jpg": "unreadable",
    }
    assert len(sink.results) == 6


async def test_paths_to_skip_are_counted_not_captioned(tmp_path: Path) -> None:
    paths = files(tmp_path, {"a.jpg": b"a", "b.jpg": b"b"})
    sink = Recorded()

    skip = frozenset({str(paths[0])})
    summary = await caption_all(
        iter(paths), backend=Titles(), sink=sink, concurrency=2, max_bytes=100, skip=skip
    )

    assert [result.title for result in sink.results] == ["b"]
    assert (summary.captioned, summary.skipped) == (1, 1)


def test_the_report_lists_failures_up_to_a_bound_then_the_totals(capsys: pytest.CaptureFixture[str]) -> None:
    summary = Summary(captioned=5, elapsed_s=2.0)
    for n in range(MAX_LISTED_FAILURES + 3):
        summary.add(Result.failed(f"/images/{n}.jpg", error="invalid_image", message="not an image"))

    report(summary, sys.stderr)

    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"failed ({MAX_LISTED_FAILURES + 3}):"
    assert err[1] == "  /images/0.jpg: invalid_image: not an image"
    assert err[-2] == "  ... and 3 more (see the output)"
    assert err[-1].startswith(f"5 captioned, {MAX_LISTED_FAILURES + 3} failed in 2.0 s")


def test_the_report_shows_a_hostile_file_name_and_message_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = Summary(captioned=0, elapsed_s=1.0)
    summary.add(Result.failed("/images/a\n5 captioned\x1b[2J.jpg", error="invalid_image", message="bad\rok"))

    report(summary, sys.stderr)

    err = capsys.readouterr().err.splitlines()
    assert err[1] == "  /images/a\\n5 captioned\\x1b[2J.jpg: invalid_image: bad\\rok"
    assert len(err) == 3


@pytest.fixture
def album(tmp_path: Path) -> Path:
    folder = tmp_path / "album"
    folder.mkdir()
    files(folder, {"a.jpg": b"alpha", "b.png": b"bravo", "c.jpg": b"bad one", "notes.txt": b"skip me"})
    return folder


def caption(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["caption", *args], input=input, env=env)
    return result.exit_code, result.stdout, result.stderr


def rows(text: str) -> Iterator[dict[str, str]]:
    return (json.loads(line) for line in text.splitlines())


def test_the_command_writes_every_result_lists_failures_and_exits_1(
    fake_api: FakeApi, album: Path, tmp_path: Path
) -> None:
    code, out, err = caption(str(album), str(tmp_path / "gone.jpg"), "--api-url", fake_api.url)

    assert code == 1, err
    by_name = {Path(row["path"]).name: row for row in rows(out)}
    assert set(by_name) == {"a.jpg", "b.png", "c.jpg", "gone.jpg"}
    assert (by_name["a.jpg"]["status"], by_name["a.jpg"]["title"]) == ("ok", "alpha")
    assert by_name["c.jpg"]["error"] == "invalid_image"
    assert f"  {album / 'c.jpg'}: invalid_image: the bytes are not an image" in err
    assert f"  {tmp_path / 'gone.jpg'}: unreadable: cannot read the file: no such file or directory" in err
    assert "2 captioned, 2 failed" in err


def test_all_captioned_exits_0_and_paths_can_come_from_stdin(fake_api: FakeApi, album: Path) -> None:
    code, out, err = caption("--api-url", fake_api.url, input=f"{album / 'a.jpg'}\n{album / 'b.png'}\n")

    assert code == 0, err
    # Rows come in the order answers arrive, which concurrent requests do not fix.
    assert sorted(row["title"] for row in rows(out)) == ["alpha", "bravo"]


def test_resume_captions_only_what_the_output_lacks(fake_api: FakeApi, album: Path, tmp_path: Path) -> None:
    output = tmp_path / "titles.csv"
    caption(str(album / "a.jpg"), "--api-url", fake_api.url, "--output", str(output))

    code, _out, err = caption(str(album), "--api-url", fake_api.url, "--output", str(output), "--resume")

    assert code == 1, err  # c.jpg is not an image
    assert fake_api.posts.count(b"alpha") == 1
    lines = output.read_text().splitlines()
    assert lines[0] == "path,status,title,id,error,message"
    assert sorted(Path(line.split(",")[0]).name for line in lines[1:]) == ["a.jpg", "b.png", "c.jpg"]
    assert "1 skipped (already in the output)" in err


def test_resume_without_an_output_is_a_usage_error() -> None:
    code, _out, err = caption("some.jpg", "--resume")

    assert code == 2
    assert "--resume needs --output" in err


@pytest.mark.parametrize(
    "api_url", ["localhost:9000", "127.0.0.1:9000", "ftp://host/", "http://", "http://[::1"]
)
def test_an_api_url_that_is_no_http_url_is_a_usage_error(album: Path, api_url: str) -> None:
    code, out, err = caption(str(album), "--api-url", api_url)

    assert code == 2, err
    assert "is not an http:// or https:// URL with a host" in err
    assert out == ""


def test_over_http_a_bad_kafka_setting_plays_no_part(fake_api: FakeApi, album: Path) -> None:
    code, out, err = caption(
        str(album / "a.jpg"), "--api-url", fake_api.url, env={"CAPTIONER_KAFKA_REPLICATION_FACTOR": "0"}
    )

    assert code == 0, err
    assert [row["title"] for row in rows(out)] == ["alpha"]
