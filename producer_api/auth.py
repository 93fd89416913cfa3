"""API-key auth: on whenever keys are configured (CAPTIONER_API_KEYS, CAPTIONER_API_KEYS_FILE); off only
when none is and CAPTIONER_API_AUTH allows it. The settings refuse to start with a keys setting that
yields no key or a key that is too short (core.settings), so auth never turns itself off.

A key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Both sides are hashed before
hmac.compare_digest, so the comparison takes the same time whatever the lengths, and every configured
key is compared, so the time does not say which one matched. Keys are never logged.
Probes, metrics (when served on the API's port), the OpenAPI document, its docs page and the demo page
stay open: they carry no caller data, and a client needs the document to learn how to authenticate.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from pydantic import SecretStr

from producer_api.demo import FILES as DEMO_FILES
from producer_api.docs import DOCS_PATH, DOCS_SCRIPT_PATH, OPENAPI_PATH
from producer_api.errors import UnauthorizedError

# The demo page and its files stay open so that a browser can load the page that asks for the key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", OPENAPI_PATH, DOCS_PATH, DOCS_SCRIPT_PATH, *DEMO_FILES})
METRICS_PATH = "/metrics"
API_KEY_HEADER = "X-API-Key"
WWW_AUTHENTICATE = 'Bearer realm="captioner"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    def __init__(self, keys: Iterable[SecretStr]) -> None:
        self._digests = tuple(_digest(key.get_secret_value()) for key in keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, candidate: str) -> bool:
        offered = _digest(candidate)
        matches = [hmac.compare_digest(offered, known) for known in self._digests]
        return any(matches)


def offered_key(request: web.BaseRequest) -> str | None:
    """The key a request carries, from Authorization: Bearer or X-API-Key; None without one."""
    scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    header = request.headers.get(API_KEY_HEADER, "").strip()
    return header or None


def auth_middleware(keys: ApiKeys, *, metrics_open: bool) -> Middleware:
    """metrics_open: /metrics is served on this port, and open; when it has a port of its own, /metrics
    here is an unknown path like any other (401 without a key), so the port says nothing about it."""
    open_paths = OPEN_PATHS | {METRICS_PATH} if metrics_open else OPEN_PATHS

    @web.middleware
    async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in open_paths:
            key = offered_key(request)
            if key is None:
                raise UnauthorizedError(
                    f"an API key is required: send Authorization: Bearer <key> or {API_KEY_HEADER}: <key>"
                )
            if not keys.accepts(key):
                raise UnauthorizedError("the API key is not valid")
        return await handler(request)

    return require_key
