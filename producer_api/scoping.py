"""The caption-cache scope of a request's caller (docs/caption-cache.md): with
CAPTIONER_CACHE_SCOPE=per_key, a one-way hash of the API key it offered; else the shared scope."""

from __future__ import annotations

from aiohttp import web

from producer_api.appkeys import CACHE_SETTINGS
from producer_api.auth import offered_key
from producer_api.cache import caller_scope


def request_scope(request: web.Request) -> str:
    return caller_scope(request.app.get(CACHE_SETTINGS), offered_key(request))
