"""The run: results written as they come, a bounded number in flight, bad files listed and the run
carried on past them; the command's output, failure list and exit code."""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from captioner.bulk.command import report
from captioner.bulk.files import ImageFile
from captioner.bulk.paths import InputPath
from captioner.bulk.results import Result
from captioner.bulk.run import MAX_LISTED_FAILURES, Summary, caption_all
from captioner.cli import app
from tests.captioner.bulk.conftest import FakeApi, error

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


def named(paths: list[Path]) -> Iterator[InputPath]:
    """As the user names them on the command line."""
    return (InputPath(path) for path in paths)


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
        caption_all(named(paths), backend=backend, sink=sink, concurrency=2, max_bytes=100), DEADLINE_S
    )

    assert [result.title for result in sink.results] == ["fast", "slow"]
    assert summary.captioned == 2


async def test_a_new_path_is_taken_only_when_one_of_the_concurrency_slots_is_free(tmp_path: Path) -> None:
    backend = Titles()
    backend.hold_until_in_flight = 3  # the first images wait until three are in flight
    written: list[Result] = []
    outstanding_when_asked: list[int] = []

    def listing() -> Iterator[InputPath]:
        for n, path in enumerate(files(tmp_path, {f"{n}.jpg": b"x%d" % n for n in range(12)})):
            outstanding_when_asked.append(n - len(written))
            yield InputPath(path)

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

    summary = await caption_all(named(paths), backend=Titles(), sink=sink, concurrency=2, max_bytes=100)

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

    skip = frozenset({bytes(paths[0])})
    summary = await caption_all(
        named(paths), backend=Titles(), sink=sink, concurrency=2, max_bytes=100, skip=skip
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


def caption(
    *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["caption", *args], input=input, env=env)
    assert not isinstance(result.exception, Exception), result.exception  # no traceback, whatever happens
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
    assert lines[0] == "path,status,title,id,error,message,path_b64"
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


# --- any file name, escapes, symlinks, API keys, a stopped run ---------------------------------------

LATIN_1 = os.fsdecode(b"caf\xe9.jpg")  # not UTF-8
ESCAPE_NAME = "\x1b]0;owned\x07\x1b[2J\x9b1mred.jpg"
API_KEY = "k" * 40
RAW_CONTROLS = ("\x1b", "\x07", "\x9b")


def name_bytes(row: dict[str, str]) -> bytes:
    return base64.b64decode(row["path_b64"]) if row.get("path_b64") else row["path"].encode()


@pytest.fixture
def odd_names(tmp_path: Path) -> Path:
    folder = tmp_path / "odd"
    folder.mkdir()
    files(folder, {LATIN_1: b"alpha", "snow\u2603.jpg": b"bravo", ESCAPE_NAME: b"charlie"})
    return folder


def test_any_file_name_goes_to_the_output_as_its_bytes_and_resumes(
    fake_api: FakeApi, odd_names: Path, tmp_path: Path
) -> None:
    expected = {os.fsencode(path) for path in odd_names.iterdir()}
    for fmt in ("jsonl", "csv"):
        output = tmp_path / f"titles.{fmt}"

        code, _out, err = caption(str(odd_names), "--api-url", fake_api.url, "-o", str(output))
        assert code == 0, err
        again, _out, err = caption(str(odd_names), "--api-url", fake_api.url, "-o", str(output), "--resume")

        assert again == 0, err
        assert "0 captioned, 0 failed, 3 skipped" in err
        text = output.read_bytes().decode("utf-8")
        parsed = (
            list(map(json.loads, text.splitlines())) if fmt == "jsonl" else csv.DictReader(text.splitlines())
        )
        assert {name_bytes(row) for row in parsed} == expected
    assert len(fake_api.posts) == 6  # each name twice (two formats), none again on --resume


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_any_file_name_goes_to_stdout(fake_api: FakeApi, odd_names: Path, fmt: str) -> None:
    code, out, err = caption(str(odd_names), "--api-url", fake_api.url, "--format", fmt)

    assert code == 0, err
    parsed = list(map(json.loads, out.splitlines())) if fmt == "jsonl" else csv.DictReader(out.splitlines())
    assert {name_bytes(row) for row in parsed} == {os.fsencode(path) for path in odd_names.iterdir()}


def test_names_that_are_not_utf8_come_on_stdin_too(fake_api: FakeApi, odd_names: Path) -> None:
    code, out, err = caption("-", "--api-url", fake_api.url, input=os.fsencode(odd_names / LATIN_1) + b"\n")

    assert code == 0, err
    assert [name_bytes(row) for row in rows(out)] == [os.fsencode(odd_names / LATIN_1)]


def test_escape_sequences_in_names_and_answers_reach_the_terminal_escaped(
    fake_api: FakeApi, odd_names: Path
) -> None:
    fake_api.script = lambda _data, _seen: error(
        422, "invalid_image\x1b[8m", "bad\x1b[2J\x9b31m\x1b]52;c;eA==\x07"
    )

    code, out, err = caption(str(odd_names / ESCAPE_NAME), "--api-url", fake_api.url)

    assert code == 1
    assert not any(control in err for control in RAW_CONTROLS), repr(err)
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b1mred.jpg: invalid_image\\x1b[8m: bad\\x1b[2J\\x9b31m" in err
    [row] = rows(out)
    assert not any(control in out for control in RAW_CONTROLS)  # JSON escapes them, and keeps them
    assert Path(row["path"]).name == ESCAPE_NAME
    assert row["message"] == "bad\x1b[2J\x9b31m\x1b]52;c;eA==\x07"


@pytest.fixture
def album_with_a_way_out(tmp_path: Path) -> Path:
    folder, outside = tmp_path / "linked", tmp_path / "private"
    folder.mkdir()
    outside.mkdir()
    files(folder, {"a.jpg": b"alpha"})
    files(outside, {"key.jpg": b"private bytes"})
    (folder / "key.jpg").symlink_to(outside / "key.jpg")
    (folder / "same.jpg").symlink_to(folder / "a.jpg")
    return folder


def test_a_symlink_out_of_the_folder_is_not_followed(fake_api: FakeApi, album_with_a_way_out: Path) -> None:
    code, out, err = caption(str(album_with_a_way_out), "--api-url", fake_api.url)

    assert code == 1, err
    assert sorted(fake_api.posts) == [b"alpha", b"alpha"]  # a.jpg and the symlink to it
    by_name = {Path(row["path"]).name: row for row in rows(out)}
    assert by_name["key.jpg"]["error"] == "outside_folder"
    assert "--follow-symlinks" in by_name["key.jpg"]["message"]


def test_follow_symlinks_follows_it(fake_api: FakeApi, album_with_a_way_out: Path) -> None:
    code, _out, err = caption(str(album_with_a_way_out), "--api-url", fake_api.url, "--follow-symlinks")

    assert code == 0, err
    assert sorted(fake_api.posts) == [b"alpha", b"alpha", b"private bytes"]


def test_the_api_key_is_sent_from_the_option_or_the_setting_and_never_shown(
    fake_api: FakeApi, album: Path
) -> None:
    image = str(album / "a.jpg")
    from_option = caption(image, "--api-url", fake_api.url, "--api-key", API_KEY)
    from_setting = caption(image, "--api-url", fake_api.url, env={"CAPTIONER_API_KEY": API_KEY + "2"})
    both = caption(
        image, "--api-url", fake_api.url, "--api-key", API_KEY, env={"CAPTIONER_API_KEY": "k" * 33}
    )
    neither = caption(image, "--api-url", fake_api.url, env={"CAPTIONER_API_KEY": ""})

    assert [code for code, _out, _err in (from_option, from_setting, both, neither)] == [0, 0, 0, 0]
    assert fake_api.authorizations == [f"Bearer {API_KEY}", f"Bearer {API_KEY}2", f"Bearer {API_KEY}", None]
    assert not any("kkkk" in out + err for _code, out, err in (from_option, from_setting, both))


def test_an_api_key_a_header_cannot_carry_is_a_usage_error(fake_api: FakeApi, album: Path) -> None:
    code, out, err = caption(
        str(album / "a.jpg"), "--api-url", fake_api.url, "--api-key", "secret\r\nX-Evil: 1"
    )

    assert code == 2
    assert "secret" not in out + err
    assert fake_api.posts == []


def test_a_run_stopped_by_an_error_says_so_with_its_counts(fake_api: FakeApi, album: Path) -> None:
    code, _out, err = caption(str(album / "a.jpg"), "--api-url", fake_api.url, "-o", "/dev/full")

    assert code == 1
    assert "stopped early (OSError: [Errno 28] No space left on device)" in err


def test_the_report_of_a_stopped_run_says_how_many_jobs_it_left_in_flight(
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = Summary(captioned=2, elapsed_s=1.0, left_in_flight=7)

    report(summary, sys.stderr, stopped="interrupted")

    err = capsys.readouterr().err
    assert "stopped early (interrupted)" in err
    assert "7 images were still in flight on the request topic" in err
