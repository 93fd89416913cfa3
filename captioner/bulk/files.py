"""Reading one image file, bounded: a file over the limit is never read whole."""

from __future__ import annotations

import mimetypes
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
    """The file's bytes, or the failure to list for it. Blocking: run it in a thread."""
    try:
        with path.open("rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as exc:
        return Result.failed(str(path), error="unreadable", message=f"cannot read the file: {_reason(exc)}")
    if len(data) > max_bytes:
        return Result.failed(
            str(path), error="payload_too_large", message=f"the file is larger than {max_bytes} bytes"
        )
    return ImageFile(str(path), data, content_type_of(path))


def _reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()
