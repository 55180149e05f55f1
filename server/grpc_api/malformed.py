"""Requests whose bytes are not the protobuf message the method takes.

grpc answers those UNKNOWN, naming the exception class, and logs a full traceback per request:
a peer sending garbage fills the log. This interceptor lets the deserializer hand over a marker
instead, answers INVALID_ARGUMENT, and logs one WARNING line per minute with a count.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime class is not generic; the stubs are
    _Handler = grpc.RpcMethodHandler

REPORT_EVERY_S = 60.0


class _Unparsable:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class _Tally:
    """Counts unparsable requests; says so at most once per REPORT_EVERY_S."""

    def __init__(self) -> None:
        self._count = 0
        self._last_report: float | None = None

    def add(self, method: str, size: int) -> None:
        self._count += 1
        now = time.monotonic()
        if self._last_report is None or now - self._last_report >= REPORT_EVERY_S:
            log.warning(
                "%d request(s) were not valid protobuf (latest: %d bytes to %s); answered "
                "INVALID_ARGUMENT, next report in %.0f s at the earliest",
                self._count, size, method, REPORT_EVERY_S,
            )  # fmt: skip
            self._count = 0
            self._last_report = now
        else:
            log.debug("unparsable request of %d bytes to %s", size, method)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._tally = _Tally()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method or ""
        parse = handler.request_deserializer

        def tolerant(raw: bytes) -> Any:
            try:
                return parse(raw)
            except DecodeError:
                return _Unparsable(len(raw))

        async def refuse(marker: _Unparsable, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            self._tally.add(method, marker.size)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid protobuf message for {method} ({marker.size} bytes)",
            )

        async def checked(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Unparsable):
                    await refuse(request, context)
                yield request

        serializer = handler.response_serializer
        stream_stream, stream_unary = handler.stream_stream, handler.stream_unary
        unary_unary, unary_stream = handler.unary_unary, handler.unary_stream
        # Only the shapes grpc.aio servicers have (async functions and async generators) are
        # wrapped; anything else keeps grpc's own behaviour.
        if stream_stream is not None and inspect.isasyncgenfunction(stream_stream):

            async def both_streaming(requests: Any, context: Any) -> AsyncIterator[Any]:
                async for response in stream_stream(cast(Any, checked(requests, context)), context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                both_streaming, request_deserializer=tolerant, response_serializer=serializer
            )
        if stream_unary is not None and inspect.iscoroutinefunction(stream_unary):

            async def client_streaming(requests: Any, context: Any) -> Any:
                return await stream_unary(cast(Any, checked(requests, context)), context)

            return grpc.stream_unary_rpc_method_handler(
                client_streaming, request_deserializer=tolerant, response_serializer=serializer
            )
        if unary_unary is not None and inspect.iscoroutinefunction(unary_unary):

            async def unary(request: Any, context: Any) -> Any:
                if isinstance(request, _Unparsable):
                    await refuse(request, context)
                return await unary_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=tolerant, response_serializer=serializer
            )
        if unary_stream is not None and inspect.isasyncgenfunction(unary_stream):

            async def server_streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, _Unparsable):
                    await refuse(request, context)
                async for response in unary_stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                server_streaming, request_deserializer=tolerant, response_serializer=serializer
            )
        return handler
