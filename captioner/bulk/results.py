"""One image's outcome, as every backend reports it and every sink writes it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

TIMEOUT = "timeout"  # the error code of an image that got no answer in time, whichever the backend


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
