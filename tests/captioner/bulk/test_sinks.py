"""JSON lines and CSV written one flushed line per result; --resume reads them back, torn tail and all."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from captioner.bulk.results import Result
from captioner.bulk.sinks import Format, format_for, open_output, prepare_resume

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
    assert lines[0] == "path,status,title,id,error,message"
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

    assert done == {"/images/a.jpg", "/images/b.jpg"}
    lines = output.read_text().splitlines()
    assert len(lines) == (4 if fmt is Format.csv else 3)  # one header, no second
    appended = '{"path": "/images/c.jpg", "status": "ok", "title": "a cat", "id": "c3"}'
    assert lines[-1] == (appended if fmt is Format.jsonl else "/images/c.jpg,ok,a cat,c3,,")
    assert prepare_resume(output, fmt) == {"/images/a.jpg", "/images/b.jpg", "/images/c.jpg"}


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
