"""The event loop the HTTP processes run on."""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (not on Windows): aiohttp spends markedly less CPU per request on it,
    which is what bounds one API process's request rate; asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
