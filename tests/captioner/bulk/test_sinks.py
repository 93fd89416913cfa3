"""JSON lines and CSV written one flushed line per result; --resume reads them back, torn tail and all."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path

import pytest

from captioner.bulk.results import Result
from captioner.bulk.sinks import Format, format_for, make_sink, open_output, prepare_resume
from captioner.errors import UsageError

GOOD = Result.captioned("/images/a.jpg", title="a red bus", id="c1")
BAD = Result.failed("/images/b.jpg", error="invalid_image", message="not an image\nat all")


@pytest.mark.parametrize(
    ("output", "given", "expected"),
    [
        (None, None, Format.jsonl),
        (Path("titles.CSV"), None, Format.csv),
        (Path("titles.jsonl"), None, Format.jsonl),
        (Path("titles.txt"), Format.csv, Format.csv),
    ],
)
def test_the_format_is_the_one_given_else_the_outputs_suffix_else_jsonl(
    output: Path | None, given: Format | None, expected: Format
) -> None:
    assert format_for(output, given) is expected


@pytest.mark.parametrize("fmt", [Format.jsonl, Format.csv])
def test_each_result_is_on_disk_as_soon_as_it_is_written(tmp_path: Path, fmt: Format) -> None:
    output = tmp_path / f"out.{fmt}"
    stream, sink, _ = open_output(output, fmt, resume=False)
    try:
        sink.write(GOOD)
        first = output.read_text()  # read by another handle, before close: flushed, not buffered
        sink.write(BAD)
    finally:
        stream.close()

    assert "a red bus" in first
    assert "b.jpg" not in first


def test_jsonl_rows_leave_out_empty_fields(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    stream, sink, _ = open_output(output, Format.jsonl, resume=False)
    with stream:
        sink.write(GOOD)
        sink.write(BAD)

    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows == [
        {"path": "/images/a.jpg", "status": "ok", "title": "a red bus", "id": "c1"},
        {"path": "/images/b.jpg", "status": "failed", "error": "invalid_image", "message": BAD.message},
    ]


def test_csv_has_a_header_and_one_line_per_result(tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    stream, sink, _ = open_output(output, Format.csv, resume=False)
    with stream:
        sink.write(GOOD)
        sink.write(BAD)

    lines = output.read_text().splitlines()
    assert lines[0] == "path,status,title,id,error,message,path_b64"
    assert len(lines) == 3
    rows = list(csv.DictReader(lines))
    assert rows[1]["message"] == "not an image at all"
    assert rows[0]["title"] == "a red bus"


@pytest.mark.parametrize("fmt", [Format.jsonl, Format.csv])
def test_resume_skips_what_is_written_cuts_a_torn_last_line_and_appends(tmp_path: Path, fmt: Format) -> None:
    output = tmp_path / f"out.{fmt}"
    stream, sink, _ = open_output(output, fmt, resume=False)
    with stream:
        sink.write(GOOD)
        sink.write(BAD)
    torn = '{"path": "/images/c.jpg", "sta' if fmt is Format.jsonl else "/images/c.jpg,o"
    with output.open("a") as crashed:
        crashed.write(torn)

    stream, sink, done = open_output(output, fmt, resume=True)
    with stream:
        sink.write(Result.captioned("/images/c.jpg", title="a cat", id="c3"))

    assert done == {b"/images/a.jpg", b"/images/b.jpg"}
    lines = output.read_text().splitlines()
    assert len(lines) == (4 if fmt is Format.csv else 3)  # one header, no second
    appended = '{"path": "/images/c.jpg", "status": "ok", "title": "a cat", "id": "c3"}'
    assert lines[-1] == (appended if fmt is Format.jsonl else "/images/c.jpg,ok,a cat,c3,,,")
    assert prepare_resume(output, fmt) == {b"/images/a.jpg", b"/images/b.jpg", b"/images/c.jpg"}


def test_resume_of_a_missing_output_starts_it(tmp_path: Path) -> None:
    output = tmp_path / "new.csv"

    stream, sink, done = open_output(output, Format.csv, resume=True)
    with stream:
        sink.write(GOOD)

    assert done == frozenset()
    assert output.read_text().startswith("path,status")


def test_a_file_that_is_one_torn_line_resumes_as_empty(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text('{"path": "/ima')

    assert prepare_resume(output, Format.jsonl) == frozenset()
    assert output.read_text() == ""


# A name in Latin-1 (not UTF-8), one with a line break, one with an escape sequence; as Python names them.
NOT_UTF8 = os.fsdecode(b"/images/caf\xe9.jpg")
LINE_BREAK = "/images/two\nlines.jpg"
ESCAPES = "/images/\x1b]0;owned\x07\x1b[2J\x9bred.jpg"


def name_bytes(row: dict[str, str]) -> bytes:
    """What docs/bulk.md tells a consumer: path_b64 where it is set, else path as UTF-8."""
    return base64.b64decode(row["path_b64"]) if row.get("path_b64") else row["path"].encode()


@pytest.mark.parametrize("fmt", [Format.jsonl, Format.csv])
def test_any_file_name_is_written_as_its_bytes_and_resumed(tmp_path: Path, fmt: Format) -> None:
    names = [NOT_UTF8, LINE_BREAK, ESCAPES, "/images/snow\u2603.jpg"]
    output = tmp_path / f"out.{fmt}"
    stream, sink, _ = open_output(output, fmt, resume=False)
    with stream:
        for name in names:
            sink.write(Result.captioned(name, title="a cat", id=None))

    text = output.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    rows = [json.loads(line) for line in text.splitlines()] if fmt is Format.jsonl else []
    if fmt is Format.csv:
        rows = list(csv.DictReader(io.StringIO(text)))
    assert [name_bytes(row) for row in rows] == [os.fsencode(name) for name in names]
    assert rows[0]["path"] == "/images/caf\ufffd.jpg"  # still readable text
    assert prepare_resume(output, fmt) == {os.fsencode(name) for name in names}


def test_jsonl_escapes_every_control_character_and_keeps_it(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    title = "a bus\x1b[31m\u202e\x9d"
    stream, sink, _ = open_output(output, Format.jsonl, resume=False)
    with stream:
        sink.write(Result.captioned(ESCAPES, title=title, id=None))

    line = output.read_text()
    assert not any(character in line for character in "\x1b\x07\x9b\x9d\u202e")
    row = json.loads(line)
    assert (row["path"], row["title"]) == (ESCAPES, title)


def test_a_lone_surrogate_from_the_server_does_not_stop_the_output(tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    stream, sink, _ = open_output(output, Format.csv, resume=False)
    with stream:
        sink.write(Result.failed("/images/a.jpg", error="bad\ud800", message="\udcff"))

    row = next(csv.DictReader(output.read_text(encoding="utf-8").splitlines()))
    assert (row["error"], row["message"]) == ("bad\ufffd", "\ufffd")


def test_csv_on_a_terminal_shows_escapes_not_control_characters() -> None:
    terminal = io.StringIO()
    sink = make_sink(terminal, Format.csv, terminal=True)

    sink.write(Result.failed(ESCAPES, error="invalid_image", message="\x1b[2Jgone"))

    shown = terminal.getvalue()
    assert "\x1b" not in shown and "\x9b" not in shown
    assert "\\x1b[2Jgone" in shown
    assert "\\x1b]0;owned\\x07" in shown


def test_resume_refuses_a_csv_with_other_columns(tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    output.write_text("path,status,title,id,error,message\n/images/a.jpg,ok,a cat,,,\n")

    with pytest.raises(UsageError, match="header"):
        open_output(output, Format.csv, resume=True)
