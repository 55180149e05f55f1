"""The HTTP port's access check: the gRPC port's token rule (`server.security`), as middleware.

It runs before any handler reads a body, so an unauthenticated request costs its headers only.
Health checks stay open, as `grpc.health.v1.Health` does on gRPC.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from server.errors import Unauthenticated
from server.security import AUTH_HEADER, TokenCheck

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def token_guard(check: TokenCheck) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            reason = check.refusal(request.headers.get(AUTH_HEADER))
            if reason is not None:
                raise Unauthenticated(reason)
        return await handler(request)

    return guard
