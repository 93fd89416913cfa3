"""The API's contract: its OpenAPI 3.1 document and a docs page that renders it in the browser.

Both are files in the package (producer_api/openapi.json, producer_api/static/docs.*), read once and
served from memory; the page is plain HTML and JavaScript, with no CDN and no build step.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

OPENAPI_PATH = "/api/v1/openapi.json"
DOCS_PATH = "/api/v1/docs"
DOCS_SCRIPT_PATH = "/api/v1/docs.js"
# The page runs only its own script and reads only this origin; it may not be framed.
_DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def _package_file(name: str) -> bytes:
    return resources.files("producer_api").joinpath(name).read_bytes()


def openapi_document() -> dict[str, Any]:
    """The document as a dict (a fresh copy: callers may change it)."""
    document: dict[str, Any] = json.loads(_package_file("openapi.json"))
    return document


async def openapi(_request: web.Request) -> web.Response:
    return web.Response(body=_package_file("openapi.json"), content_type="application/json")


async def docs_page(_request: web.Request) -> web.Response:
    return web.Response(
        body=_package_file("static/docs.html"), content_type="text/html", headers=_DOCS_HEADERS
    )


async def docs_script(_request: web.Request) -> web.Response:
    return web.Response(
        body=_package_file("static/docs.js"), content_type="text/javascript", headers=_DOCS_HEADERS
    )


def add_docs_routes(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, openapi)
    app.router.add_get(DOCS_PATH, docs_page)
    app.router.add_get(DOCS_SCRIPT_PATH, docs_script)
