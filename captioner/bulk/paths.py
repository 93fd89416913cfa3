"""The images to caption: files, folders (their image files, sorted), or newline-separated paths on stdin.

Paths are yielded one at a time, so 10,000 or 10 million of them never sit in memory at once; only one
folder's listing does, while it is walked (and the subfolders still to walk, on an explicit stack: a tree
deeper than Python's recursion limit is walked like any other).

Symlinks: a path named on the command line or on stdin is the user's choice, followed wherever it
points. In a folder walk, a file (a symlink to a file included) is taken only where it resolves inside
the folder given, which is checked again on the open file when it is read (files.py), so a name swapped
for a symlink after the walk gains nothing; and symlinked subfolders are not walked. `follow_symlinks`
lifts both; a subfolder reached twice (a symlink loop) is walked once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.images import ACCEPTED_SUFFIXES

IMAGE_SUFFIXES = frozenset(ACCEPTED_SUFFIXES)
STDIN = "-"


@dataclass(frozen=True, slots=True)
class InputPath:
    path: Path
    # The resolved folder a walked file must stay inside; None: named by the user, or symlinks followed.
    within: Path | None = None


def input_paths(
    sources: Iterable[str], *, recursive: bool, stdin: BinaryIO, follow_symlinks: bool = False
) -> Iterator[InputPath]:
    """Each source in turn: `-` reads stdin (one path a line, as bytes: a name need not be UTF-8; blank
    lines skipped), a folder gives its image files, anything else is yielded as it is (a missing file
    fails when it is read, and is listed)."""
    for source in sources:
        if source == STDIN:
            for line in stdin:
                if name := line.rstrip(b"\r\n"):
                    yield from _expand(Path(os.fsdecode(name)), recursive, follow_symlinks)
        else:
            yield from _expand(Path(source), recursive, follow_symlinks)


def uses_stdin(sources: list[str]) -> bool:
    return STDIN in sources


def count_paths(
    sources: Iterable[str],
    *,
    recursive: bool,
    skip: frozenset[bytes] = frozenset(),
    follow_symlinks: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """How many paths `input_paths` will yield (stdin excluded), minus those in `skip`: the progress
    bar's total. Walks the folders a second time rather than keep what the first walk found; `stop` ends
    the walk early (the run ended first), with the count so far."""
    total = 0
    for source in sources:
        if source == STDIN:
            continue
        for found in _expand(Path(source), recursive, follow_symlinks):
            if stop is not None and stop.is_set():
                return total
            total += os.fsencode(found.path) not in skip
    return total


def _expand(path: Path, recursive: bool, follow_symlinks: bool) -> Iterator[InputPath]:
    if path.is_dir():
        yield from _image_files(path, recursive=recursive, follow_symlinks=follow_symlinks)
    else:
        yield InputPath(path)


def _image_files(top: Path, *, recursive: bool, follow_symlinks: bool) -> Iterator[InputPath]:
    """Depth first: a folder's image files, then each subfolder's in name order."""
    within = None if follow_symlinks else Path(os.path.realpath(top))
    # Only symlinked subfolders can lead back up the tree; then each folder is walked once.
    walked = {_identity(top)} if follow_symlinks else None
    to_walk = [top]
    while to_walk:
        folder = to_walk.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            yield InputPath(folder)  # fails when it is read, and so is listed among the failures
            continue
        subfolders = []
        for entry in entries:
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                yield InputPath(Path(entry.path), within)
            elif recursive and _walkable(entry, follow_symlinks) and _first_visit(entry, walked):
                subfolders.append(Path(entry.path))
        to_walk.extend(reversed(subfolders))


def _walkable(entry: os.DirEntry[str], follow_symlinks: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow_symlinks)
    except OSError:
        return False


def _first_visit(folder: os.DirEntry[str], walked: set[tuple[int, int] | None] | None) -> bool:
    if walked is None:
        return True
    identity = _identity(folder)
    if identity is not None and identity in walked:
        return False
    walked.add(identity)
    return True


def _identity(folder: os.DirEntry[str] | Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, to walk each once; None where it cannot be read (it fails later)."""
    try:
        found = folder.stat() if isinstance(folder, os.DirEntry) else os.stat(folder)
    except OSError:
        return None
    return found.st_dev, found.st_ino
