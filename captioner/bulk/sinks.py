"""Where results go: JSON lines or CSV, one line per image, written and flushed as each result arrives.

Every record is exactly one line in both formats (CSV fields have their line breaks replaced), so a run
killed mid-write leaves at most one torn last line, which `--resume` cuts off before appending.

Both are UTF-8. A file name goes in `path` as UTF-8 text; where that text is not exactly the name (a
name that is not UTF-8; in CSV also one with a line break) `path_b64` holds the name's bytes in base64,
and a consumer takes those. Text the service sent is written as it came (a lone surrogate, which UTF-8
cannot carry, as U+FFFD); JSON escapes every control and format character, and CSV written to a
terminal shows them escaped (captioner/bulk/terminal.py).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TextIO

from captioner.bulk.results import (
    FIELDS,
    PATH_BYTES_FIELD,
    PathKey,
    Result,
    read_path,
    valid_text,
    written_path,
)
from captioner.bulk.terminal import json_escaped
from captioner.errors import UsageError
from core.text import escaped

CSV_FIELDS = (*FIELDS, PATH_BYTES_FIELD)


class Format(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


def format_for(output: Path | None, given: Format | None) -> Format:
    """The format asked for, else the output's suffix says (.csv), else JSON lines."""
    if given is not None:
        return given
    if output is not None and output.suffix.lower() == ".csv":
        return Format.csv
    return Format.jsonl


class ResultSink(Protocol):
    def write(self, result: Result) -> None: ...


class JsonlSink:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, result: Result) -> None:
        path = written_path(result.path, one_line=False)
        row = {"path": path.text, **_texts(result), PATH_BYTES_FIELD: path.raw_b64}
        line = json.dumps({key: value for key, value in row.items() if value is not None}, ensure_ascii=False)
        self._stream.write(json_escaped(line) + "\n")
        self._stream.flush()


class CsvSink:
    """`terminal`: the stream is a terminal, where text is shown escaped rather than as it came."""

    def __init__(self, stream: TextIO, *, header: bool, terminal: bool = False) -> None:
        self._stream = stream
        self._writer = csv.writer(stream, lineterminator="\n")
        self._terminal = terminal
        if header:
            self._writer.writerow(CSV_FIELDS)
            stream.flush()

    def write(self, result: Result) -> None:
        path = written_path(result.path, one_line=True)
        row = {"path": path.text, **_texts(result), PATH_BYTES_FIELD: path.raw_b64}
        self._writer.writerow([self._field(row[name]) for name in CSV_FIELDS])
        self._stream.flush()

    def _field(self, value: str | None) -> str:
        if value is None:
            return ""
        one_line = value.replace("\r", " ").replace("\n", " ")
        return escaped(one_line) if self._terminal else one_line


def _texts(result: Result) -> dict[str, str | None]:
    return {
        "status": result.status.value,
        "title": valid_text(result.title),
        "id": valid_text(result.id),
        "error": valid_text(result.error),
        "message": valid_text(result.message),
    }


def make_sink(stream: TextIO, fmt: Format, *, header: bool = True, terminal: bool = False) -> ResultSink:
    return CsvSink(stream, header=header, terminal=terminal) if fmt is Format.csv else JsonlSink(stream)


def prepare_resume(output: Path, fmt: Format) -> frozenset[PathKey]:
    """The paths (as bytes) an earlier run already wrote to `output`; a torn last line (a crash
    mid-write) is cut off first, so what is appended starts on a line of its own. A missing output means
    nothing is done yet."""
    if not output.exists():
        return frozenset()
    _cut_torn_tail(output)
    # A byte that is not UTF-8 (the file was edited, or damaged) spoils one row, not the resume.
    with output.open(encoding="utf-8", errors="replace", newline="") as stream:
        return frozenset(_csv_paths(stream) if fmt is Format.csv else _jsonl_paths(stream))


def _cut_torn_tail(output: Path) -> None:
    with output.open("rb+") as stream:
        end = stream.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(4096, position)
            stream.seek(position - step)
            chunk = stream.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        if position != end:
            stream.truncate(position)


def _jsonl_paths(stream: TextIO) -> Iterator[PathKey]:
    for line in stream:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and (path := read_path(row.get("path"), row.get(PATH_BYTES_FIELD))):
            yield path


def _csv_paths(stream: TextIO) -> Iterator[PathKey]:
    rows = csv.reader(stream)
    header = next(rows, None)
    if header is None:
        return
    if tuple(header) != CSV_FIELDS:
        raise UsageError(
            f"--resume: the output's header is not {','.join(CSV_FIELDS)} (a file written by another "
            "tool, or by an older captioner without the path_b64 column): start a new output"
        )
    for row in rows:
        fields = dict(zip(CSV_FIELDS, row, strict=False))
        if path := read_path(fields.get("path"), fields.get(PATH_BYTES_FIELD)):
            yield path


def open_output(output: Path, fmt: Format, *, resume: bool) -> tuple[TextIO, ResultSink, frozenset[PathKey]]:
    """The output file opened for this run, its sink, and the paths to skip (with --resume)."""
    done = prepare_resume(output, fmt) if resume else frozenset()
    appending = resume and output.exists() and output.stat().st_size > 0
    stream = output.open("a" if appending else "w", encoding="utf-8", newline="")
    return stream, make_sink(stream, fmt, header=not appending), done
