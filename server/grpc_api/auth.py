"""Auth token check for every RPC: a missing or wrong token is answered UNAUTHENTICATED.

Clients send `authorization: Bearer <token>` metadata (client/security.py). The rule itself
(`server.security`) is the one the HTTP port applies; health checks stay open on both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from server.security import AUTH_HEADER, TokenCheck, token_check
from server.settings import ServerSettings

AUTH_METADATA_KEY = AUTH_HEADER
EXEMPT_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
# How long a refused streaming call may take to send its first message (see _take_first).
FIRST_MESSAGE_WAIT_S = 1.0

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime class is not generic; the stubs are
    _Handler = grpc.RpcMethodHandler


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, check: TokenCheck, exempt_prefixes: Sequence[str] = EXEMPT_METHOD_PREFIXES
    ) -> None:
        self._check = check
        self._exempt = tuple(exempt_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(self._exempt):
            return handler
        presented = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY:
                presented = value
        reason = self._check.refusal(presented)
        if reason is None:
            return handler
        return _refusing(handler, reason)


def _refusing(handler: _Handler, reason: str) -> _Handler:
    """A handler of the same shape as `handler` that only answers UNAUTHENTICATED."""
    request_streaming = handler.request_streaming

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if request_streaming:
            await _take_first(request)
        # A status, not context.abort: see server/grpc_api/status.py, `_set_status`.
        context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        context.set_details(reason)

    async def refuse_streaming(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await refuse(request, context)
        return
        yield  # an async generator, as grpc.aio expects of a streaming-response handler

    make: Callable[..., _Handler]
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        refuse_streaming if handler.response_streaming else refuse,
        # A refused call's messages are never parsed: an unauthenticated peer's 30 MB request
        # costs no protobuf copy.
        request_deserializer=_discard,
        response_serializer=handler.response_serializer,
    )


def _discard(raw: bytes) -> None:
    return None


async def _take_first(requests: AsyncIterator[Any]) -> None:
    """Read the client's first message (briefly) before refusing its stream.

    A Python aio client whose first write races the refusal sees INTERNAL ("Internal error
    from Core") instead of the UNAUTHENTICATED we send; once its first message is read, it gets
    the real status.
    """
    with contextlib.suppress(StopAsyncIteration, TimeoutError, grpc.RpcError):
        async with asyncio.timeout(FIRST_MESSAGE_WAIT_S):
            await anext(aiter(requests))


def auth_interceptors(settings: ServerSettings) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors `grpc.aio.server(interceptors=...)` needs for these settings."""
    check = token_check(settings)
    return [] if check is None else [TokenAuthInterceptor(check)]
