"""One image's outcome, as every backend reports it and every sink writes it.

A path is kept as Python keeps a file name (`os.fsdecode`: bytes that are not UTF-8 become lone
surrogates), so the exact bytes of any name survive to the output; `written_path` says how a sink writes
them, `PathKey` is what `--resume` compares.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from enum import StrEnum

TIMEOUT = "timeout"  # the error code of an image that got no answer in time, whichever the backend

_SURROGATE = re.compile("[\ud800-\udfff]")
# The bytes of a file name, as `--resume` compares them (a name need not be text in any encoding).
PathKey = bytes


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Result:
    path: str
    status: Status
    title: str | None = None
    id: str | None = None
    error: str | None = None  # a stable code: the service's (invalid_image, ...) or this tool's (unreadable)
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @classmethod
    def captioned(cls, path: str, *, title: str, id: str | None) -> Result:
        return cls(path, Status.OK, title=title, id=id)

    @classmethod
    def failed(cls, path: str, *, error: str, message: str, id: str | None = None) -> Result:
        return cls(path, Status.FAILED, id=id, error=error, message=message)


FIELDS = ("path", "status", "title", "id", "error", "message")
# Set only where `path` cannot hold the name exactly: the name's bytes, base64 (RFC 4648, with padding).
PATH_BYTES_FIELD = "path_b64"


def path_key(path: str | os.PathLike[str]) -> PathKey:
    return os.fsencode(path)


@dataclass(frozen=True, slots=True)
class WrittenPath:
    text: str  # the name decoded as UTF-8 (undecodable bytes as U+FFFD): always valid text
    raw_b64: str | None  # the name's bytes, base64, where `text` is not exactly the name


def written_path(path: str, *, one_line: bool) -> WrittenPath:
    """How a sink writes `path`: its UTF-8 text, and its bytes as well where the text would lose them (a
    name that is not UTF-8, or, for a format that keeps each record on one line, one with a line break)."""
    raw = path_key(path)
    text = raw.decode("utf-8", errors="replace")
    exact = text.encode("utf-8") == raw and not (one_line and ("\n" in text or "\r" in text))
    return WrittenPath(text, None if exact else base64.b64encode(raw).decode("ascii"))


def read_path(text: object, raw_b64: object) -> PathKey | None:
    """The name's bytes as a sink wrote them (the inverse of `written_path`); None when neither field
    holds one (a row written by hand, or damaged)."""
    if isinstance(raw_b64, str) and raw_b64:
        try:
            return base64.b64decode(raw_b64, validate=True)
        except ValueError:  # binascii.Error too
            return None
    if isinstance(text, str) and text:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in JSON
            return None
    return None


def valid_text(value: str | None) -> str | None:
    """A server's string as text any UTF-8 stream takes: JSON and Avro both let a lone surrogate
    through (JSON as an escape), which a strict UTF-8 writer would refuse mid-run."""
    if value is None or value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)
