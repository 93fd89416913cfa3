"""Reading one image file, bounded: a file over the limit is never read whole."""

from __future__ import annotations

import mimetypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from captioner.bulk.results import Result
from core.images import ACCEPTED_CONTENT_TYPES

OCTET_STREAM = "application/octet-stream"
OUTSIDE_FOLDER = "outside_folder"
_OUTSIDE_MESSAGE = "a symlink out of the folder being captioned (--follow-symlinks follows it)"


@dataclass(frozen=True, slots=True)
class ImageFile:
    path: str
    data: bytes
    content_type: str


def content_type_of(path: Path) -> str:
    """The type its suffix names when the service takes that type; otherwise the service sniffs the bytes."""
    guessed = mimetypes.guess_type(path.name)[0]
    return guessed if guessed in ACCEPTED_CONTENT_TYPES else OCTET_STREAM


def read_image(path: Path, *, max_bytes: int, within: Path | None = None) -> ImageFile | Result:
    """The file's bytes, or the failure to list for it. Blocking: run it in a thread.

    Only a regular file is read: a FIFO or a device named on stdin would block the read forever (or never
    end). It is opened without blocking and checked on the open descriptor, so it cannot be swapped
    between the check and the read. `within`: the (resolved) folder the file must resolve inside; it is
    checked before the open (nothing outside is opened) and again on the open descriptor (a name swapped
    for a symlink in between is caught)."""
    if within is not None and not _inside(os.path.realpath(path), within):
        return Result.failed(str(path), error=OUTSIDE_FOLDER, message=_OUTSIDE_MESSAGE)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return Result.failed(str(path), error="unreadable", message=f"cannot read the file: {_reason(exc)}")
    try:
        if within is not None and not _opened_inside(path, descriptor, within):
            return Result.failed(str(path), error=OUTSIDE_FOLDER, message=_OUTSIDE_MESSAGE)
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return Result.failed(str(path), error="unreadable", message="not a regular file")
        with open(descriptor, "rb", closefd=False) as stream:
            data = stream.read(max_bytes + 1)
    except OSError as exc:
        return Result.failed(str(path), error="unreadable", message=f"cannot read the file: {_reason(exc)}")
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        return Result.failed(
            str(path), error="payload_too_large", message=f"the file is larger than {max_bytes} bytes"
        )
    return ImageFile(str(path), data, content_type_of(path))


def _inside(resolved: str, folder: Path) -> bool:
    return os.path.commonpath([resolved, folder]) == str(folder)


def _opened_inside(path: Path, descriptor: int, within: Path) -> bool:
    """The open file is the one `path` resolves to now, and that is inside `within`: had a component been
    swapped for a symlink out and back around the open, the file opened would not be the one found now."""
    resolved = os.path.realpath(path)
    try:
        found = os.stat(resolved)
    except OSError:
        return False
    opened = os.fstat(descriptor)
    return _inside(resolved, within) and (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def _reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()
