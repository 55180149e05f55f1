"""Shutdown on the HTTP port: count requests in flight, and refuse new ones once told to.

While the server drains, the port stays open: health answers (ready: 503) and requests in
flight finish; new requests get a JSON 503 until the listener closes.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from aiohttp.typedefs import Handler

from server.errors import ShuttingDown
from server.http_api.guard import OPEN_PATHS


class DrainGate:
    def __init__(self) -> None:
        self.refusing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.refusing and request.path not in OPEN_PATHS:
            raise ShuttingDown("server is shutting down")
        self._in_flight += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> None:
        """Until no request is in flight, or `timeout_s` has passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
