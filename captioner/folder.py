"""`captioner caption-folder`: every image in a folder through the running pipeline, over its HTTP API."""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from rich.progress import Progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class FolderResult:
    path: str
    status: int
    title: str | None = None
    id: str | None = None
    error: str | None = None


def image_files(folder: Path, *, recursive: bool) -> Iterator[Path]:
    pattern = "**/*" if recursive else "*"
    for path in sorted(folder.glob(pattern)):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


async def _caption_one(session: aiohttp.ClientSession, url: str, path: Path) -> FolderResult:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = await asyncio.to_thread(path.read_bytes)
    try:
        async with session.post(url, data=data, headers={"Content-Type": content_type}) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        return FolderResult(str(path), status=0, error=f"{type(exc).__name__}: {exc}")
    if response.status == 200:
        return FolderResult(str(path), 200, title=body.get("title"), id=body.get("id"))
    error = body.get("error", {}) if isinstance(body, dict) else {}
    return FolderResult(str(path), response.status, id=error.get("id"), error=error.get("message"))


async def caption_folder(
    paths: list[Path], *, api_url: str, concurrency: int, timeout_s: float, show_progress: bool
) -> list[FolderResult]:
    """Caption with up to `concurrency` requests in flight; results keep the order of `paths`."""
    url = api_url.rstrip("/") + "/api/v1/predictions"
    slots = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("captioning", total=len(paths))
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def bounded(path: Path) -> FolderResult:
                async with slots:
                    result = await _caption_one(session, url, path)
                progress.advance(task)
                return result

            return list(await asyncio.gather(*(bounded(path) for path in paths)))


def as_json_line(result: FolderResult) -> str:
    return json.dumps({key: value for key, value in asdict(result).items() if value is not None})
