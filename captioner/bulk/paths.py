"""The images to caption: files, folders (their image files, sorted), or newline-separated paths on stdin.

Paths are yielded one at a time, so 10,000 or 10 million of them never sit in memory at once; only one
folder's listing does, while it is walked (and the subfolders still to walk, on an explicit stack: a tree
deeper than Python's recursion limit is walked like any other).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from core.images import ACCEPTED_SUFFIXES

IMAGE_SUFFIXES = frozenset(ACCEPTED_SUFFIXES)
STDIN = "-"


def input_paths(sources: Iterable[str], *, recursive: bool, stdin: TextIO) -> Iterator[Path]:
    """Each source in turn: `-` reads stdin (one path a line; blank lines skipped), a folder gives its image
    files, anything else is yielded as it is (a missing file fails when it is read, and is listed)."""
    for source in sources:
        if source == STDIN:
            for line in stdin:
                if name := line.rstrip("\r\n"):
                    yield from _expand(Path(name), recursive=recursive)
        else:
            yield from _expand(Path(source), recursive=recursive)


def uses_stdin(sources: list[str]) -> bool:
    return STDIN in sources


def count_paths(sources: Iterable[str], *, recursive: bool, skip: frozenset[str] = frozenset()) -> int:
    """How many paths `input_paths` will yield (stdin excluded), minus those in `skip`: the progress
    bar's total. Walks the folders a second time rather than keep what the first walk found."""
    return sum(
        str(path) not in skip
        for source in sources
        if source != STDIN
        for path in _expand(Path(source), recursive=recursive)
    )


def _expand(path: Path, *, recursive: bool) -> Iterator[Path]:
    if path.is_dir():
        yield from _image_files(path, recursive=recursive)
    else:
        yield path


def _image_files(top: Path, *, recursive: bool) -> Iterator[Path]:
    """Depth first: a folder's image files, then each subfolder's in name order."""
    to_walk = [top]
    while to_walk:
        folder = to_walk.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            yield folder  # fails when it is read, and so is listed among the failures
            continue
        subfolders = []
        for entry in entries:
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(entry.path)
            elif recursive and entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
        to_walk.extend(reversed(subfolders))
