"""Where results go: JSON lines or CSV, one line per image, written and flushed as each result arrives.

Every record is exactly one line in both formats (CSV fields have their line breaks replaced), so a run
killed mid-write leaves at most one torn last line, which `--resume` cuts off before appending.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TextIO

from captioner.bulk.results import FIELDS, Result


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
        row = {key: value for key, value in asdict(result).items() if value is not None}
        self._stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._stream.flush()


class CsvSink:
    def __init__(self, stream: TextIO, *, header: bool) -> None:
        self._stream = stream
        self._writer = csv.writer(stream, lineterminator="\n")
        if header:
            self._writer.writerow(FIELDS)
            stream.flush()

    def write(self, result: Result) -> None:
        row = asdict(result)
        self._writer.writerow([_one_line(row[name]) for name in FIELDS])
        self._stream.flush()


def _one_line(value: object) -> str:
    return "" if value is None else str(value).replace("\r", " ").replace("\n", " ")


def make_sink(stream: TextIO, fmt: Format, *, header: bool = True) -> ResultSink:
    return CsvSink(stream, header=header) if fmt is Format.csv else JsonlSink(stream)


def prepare_resume(output: Path, fmt: Format) -> frozenset[str]:
    """The paths an earlier run already wrote to `output`; a torn last line (a crash mid-write) is cut off
    first, so what is appended starts on a line of its own. A missing output means nothing is done yet."""
    if not output.exists():
        return frozenset()
    _cut_torn_tail(output)
    with output.open(encoding="utf-8", newline="") as stream:
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


def _jsonl_paths(stream: TextIO) -> Iterator[str]:
    for line in stream:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("path"), str):
            yield row["path"]


def _csv_paths(stream: TextIO) -> Iterator[str]:
    for row in csv.DictReader(stream):
        if path := row.get("path"):
            yield path


def open_output(output: Path, fmt: Format, *, resume: bool) -> tuple[TextIO, ResultSink, frozenset[str]]:
    """The output file opened for this run, its sink, and the paths to skip (with --resume)."""
    done = prepare_resume(output, fmt) if resume else frozenset()
    appending = resume and output.exists() and output.stat().st_size > 0
    stream = output.open("a" if appending else "w", encoding="utf-8", newline="")
    return stream, make_sink(stream, fmt, header=not appending), done
