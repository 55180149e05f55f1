"""A real HTTP server that receives the controller's webhooks and records them, for tests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Receiver:
    """A real HTTP server that records what it is sent; `answers` scripts its first replies
    (then 200), `hold` keeps requests waiting until it is set."""

    answers: list[int] = field(default_factory=list)
    always: int = 200
    # Checks X-Edgefleet-Signature against the raw body; a bad one is answered 401.
    secret: bytes | None = None
    hold: asyncio.Event | None = None
    # Set when a request arrives (before it waits on `hold`).
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[tuple[str, int]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        listener = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(self.runner, listener).start()
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        body = await request.read()
        event = json.loads(body)
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("X-Edgefleet-Signature", ""), expected):
                self.attempts.append((event["event"], 401))
                return web.Response(status=401)
        status = self.answers.pop(0) if self.answers else self.always
        self.attempts.append((event["event"], status))
        if 200 <= status < 300:
            self.events.append(event)
            self.headers.append(dict(request.headers))
        return web.Response(status=status)

    def names(self) -> list[str]:
        return [event["event"] for event in self.events]
