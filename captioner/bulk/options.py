"""What `captioner caption` was asked to do, checked before anything starts."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from captioner.bulk.sinks import Format, format_for
from captioner.errors import UsageError


class Via(StrEnum):
    http = "http"
    kafka = "kafka"


DEFAULT_CONCURRENCY = {Via.http: 32, Via.kafka: 128}
# RFC 6750's b64token and more: any visible ASCII, which a header carries as it is (no CR, LF or NUL).
_HEADER_SAFE_KEY = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class CaptionOptions:
    sources: list[str]
    via: Via
    api_url: str
    output: Path | None
    format: Format
    resume: bool
    recursive: bool
    follow_symlinks: bool
    concurrency: int
    timeout_s: float
    attempts: int
    show_progress: bool
    api_key: SecretStr | None = None  # --via http: sent as Authorization: Bearer


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


def checked_api_key(api_key: SecretStr | None) -> SecretStr | None:
    """A key a header can carry as it is; the message never shows the key."""
    if api_key is None or not api_key.get_secret_value():
        return None
    if not _HEADER_SAFE_KEY.fullmatch(api_key.get_secret_value()):
        raise UsageError("the API key holds a character an HTTP header cannot carry (only visible ASCII)")
    return api_key


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
    follow_symlinks: bool = False,
    api_key: SecretStr | None = None,
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
        follow_symlinks=follow_symlinks,
        concurrency=concurrency or DEFAULT_CONCURRENCY[via],
        timeout_s=timeout_s,
        attempts=attempts,
        show_progress=sys.stderr.isatty(),
        api_key=checked_api_key(api_key) if via is Via.http else None,
    )
