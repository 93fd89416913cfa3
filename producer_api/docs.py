"""The API's contract: its OpenAPI 3.1 document and a docs page that renders it in the browser.

Both are files in the package (producer_api/openapi.json, producer_api/static/docs.*), read once when the
routes are added and served from memory with an ETag (demo.StaticFile); the page is plain HTML and
JavaScript, with no CDN and no build step.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from aiohttp import web

from producer_api.demo import load_file

OPENAPI_PATH = "/api/v1/openapi.json"
DOCS_PATH = "/api/v1/docs"
DOCS_SCRIPT_PATH = "/api/v1/docs.js"
OPENAPI_FILE = "openapi.json"
# The page runs only its own script and reads only this origin; it may not be framed.
DOCS_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
# Route path -> (file under producer_api/, its content type).
FILES = {
    OPENAPI_PATH: (OPENAPI_FILE, "application/json"),
    DOCS_PATH: ("static/docs.html", "text/html"),
    DOCS_SCRIPT_PATH: ("static/docs.js", "text/javascript"),
}


def openapi_document() -> dict[str, Any]:
    """The document as a dict, read from the package (blocking: for tools and tests, not handlers)."""
    document: dict[str, Any] = json.loads(resources.files("producer_api").joinpath(OPENAPI_FILE).read_bytes())
    return document


def add_docs_routes(app: web.Application) -> None:
    """GET (and HEAD) the document, its page and its script, read once here, before the server starts."""
    for path, (name, content_type) in FILES.items():
        app.router.add_get(path, load_file(name, content_type, security_headers=DOCS_SECURITY_HEADERS).handle)
