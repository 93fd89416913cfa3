"""What `captioner caption` was asked to do, checked before anything starts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from captioner.bulk.sinks import Format, format_for
from captioner.errors import UsageError


class Via(StrEnum):
    http = "http"
    kafka = "kafka"


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


def sources_of(paths: list[str], *, stdin_is_tty: bool) -> list[str]:
    """No path and a piped stdin mean the paths come from stdin."""
    if paths:
        return paths
    if stdin_is_tty:
        raise UsageError("name files or folders to caption, or pipe their paths in (one a line)")
    return ["-"]


def checked_api_url(api_url: str) -> str:
    """An http(s) URL with a host: aiohttp would refuse anything else for every image, one by one."""
    try:
        parts = urlsplit(api_url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a broken IPv6 literal
        usable = False
    if not usable:
        raise UsageError(f"--api-url {api_url!r} is not an http:// or https:// URL with a host")
    return api_url


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
        api_url=checked_api_url(api_url) if via is Via.http else api_url,
        output=output,
        format=format_for(output, format),
        resume=resume,
        recursive=recursive,
        concurrency=concurrency or DEFAULT_CONCURRENCY[via],
        timeout_s=timeout_s,
        attempts=attempts,
        show_progress=sys.stderr.isatty(),
    )
