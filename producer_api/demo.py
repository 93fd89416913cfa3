"""The demo page at `/`: three static files (HTML, script, stylesheet) under a strict Content Security
Policy. The page calls the same `POST /api/v1/predictions` as any client; nothing here touches Kafka."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

# 'self' only: no inline script or style, no other origin. Previews and thumbnails are blob: and data:
# URLs made in the page from the user's own file.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The files keep their names across releases, so a browser may keep a copy but must ask (a 304 is cheap).
CACHE_CONTROL = "no-cache"

# Route path -> (file under producer_api/static, its content type).
FILES = {
    "/": ("index.html", "text/html"),
    "/static/demo.js": ("demo.js", "text/javascript"),
    "/static/demo.css": ("demo.css", "text/css"),
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str
    security_headers: Mapping[str, str]

    async def handle(self, request: web.Request) -> web.Response:
        headers = {**self.security_headers, "Cache-Control": CACHE_CONTROL}
        if self.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers={**headers, "ETag": self.etag})
        response = web.Response(
            body=self.body, content_type=self.content_type, charset="utf-8", headers=headers
        )
        response.headers["ETag"] = self.etag
        return response


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def load_file(
    name: str, content_type: str, *, security_headers: Mapping[str, str] = SECURITY_HEADERS
) -> StaticFile:
    """A file of the package (name relative to producer_api/, e.g. "static/index.html"), read now."""
    body = resources.files("producer_api").joinpath(name).read_bytes()
    return StaticFile(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"', security_headers)


def add_demo_routes(app: web.Application) -> None:
    """GET (and HEAD) `/` and its two assets, read once here, before the server starts."""
    for path, (name, content_type) in FILES.items():
        app.router.add_get(path, load_file(f"static/{name}", content_type).handle)
