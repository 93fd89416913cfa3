"""What `captioner caption` was asked to do, checked before anything starts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from captioner.bulk.sinks import Format, format_for


class Via(StrEnum):
    http = "http"
    kafka = "kafka"


class ExitCode:
    OK = 0
    FAILURES = 1
    USAGE = 2
    UNAVAILABLE = 3


DEFAULT_CONCURRENCY = {Via.http: 32, Via.kafka: 128}


@dataclass(frozen=True)
class CaptionOptions:
    sources: list[str]
    via: Via
    api_url: str
    output: Path | None
    format: Format
    resume: bool
    recursive: bool
    concurrency: int
    timeout_s: float
    attempts: int
    show_progress: bool


class UsageError(Exception):
    """A command line that cannot run; its message is for the user."""


def sources_of(paths: list[str], *, stdin_is_tty: bool) -> list[str]:
    """No path and a piped stdin mean the paths come from stdin."""
    if paths:
        return paths
    if stdin_is_tty:
        raise UsageError("name files or folders to caption, or pipe their paths in (one a line)")
    return ["-"]


def options_from(
    *,
    paths: list[str],
    via: Via,
    api_url: str,
    output: Path | None,
    format: Format | None,
    resume: bool,
    recursive: bool,
    concurrency: int | None,
    timeout_s: float,
    attempts: int,
) -> CaptionOptions:
    if resume and output is None:
        raise UsageError("--resume needs --output: it skips the paths already in that file")
    return CaptionOptions(
        sources=sources_of(paths, stdin_is_tty=sys.stdin.isatty()),
        via=via,
        api_url=api_url,
        output=output,
        format=format_for(output, format),
        resume=resume,
        recursive=recursive,
        concurrency=concurrency or DEFAULT_CONCURRENCY[via],
        timeout_s=timeout_s,
        attempts=attempts,
        show_progress=sys.stderr.isatty(),
    )
