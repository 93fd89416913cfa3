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


@dataclass(frozen=True, slots=True)
class ImageFile:
    path: str
    data: bytes
    content_type: str


def content_type_of(path: Path) -> str:
    """The type its suffix names when the service takes that type; otherwise the service sniffs the bytes."""
    guessed = mimetypes.guess_type(path.name)[0]
    return guessed if guessed in ACCEPTED_CONTENT_TYPES else OCTET_STREAM


def read_image(path: Path, *, max_bytes: int) -> ImageFile | Result:
    """The file's bytes, or the failure to list for it. Blocking: run it in a thread.

    Only a regular file is read: a FIFO or a device named on stdin would block the read forever (or never
    end). It is opened without blocking and checked on the open descriptor, so it cannot be swapped
    between the check and the read."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return Result.failed(str(path), error="unreadable", message=f"cannot read the file: {_reason(exc)}")
    try:
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


def _reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()
