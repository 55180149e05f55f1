"""Who may call what on the controller's mutual-TLS port: one interceptor, one rule per service.

Devices and operators hold certificates from the same CA and reach the same port, so the rule
is enforced before any servicer code runs: a method added to a service, or a servicer that
forgets a check, is still guarded. A service without a rule is refused (fail closed).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from fleet.grpc_status import Peer, peer

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
# The verified client certificate -> None to allow, or why it is refused; a rule may answer
# later (a replica looking up a device enrolled through another one).
Rule = Callable[[Peer], str | None | Awaitable[str | None]]


class ServiceAuthorization(grpc.aio.ServerInterceptor):
    def __init__(self, rules: Mapping[str, Rule]) -> None:
        # Keyed by full service name, e.g. "edgefleet.fleet.v1.AdminService".
        self._rules = dict(rules)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = str(handler_call_details.method)  # "/package.Service/Method"
        service = method.lstrip("/").rsplit("/", 1)[0]
        rule = self._rules.get(service)
        return _guarded(handler, rule if rule is not None else _refuse_unknown)


def _refuse_unknown(caller: Peer) -> str | None:
    return "this service takes no calls on this port"


async def _check(rule: Rule, context: Context) -> None:
    refusal = rule(peer(context))
    if inspect.isawaitable(refusal):
        refusal = await refusal
    if refusal is not None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)


def _guarded(handler: Handler, rule: Rule) -> Handler:
    # The behaviours of an aio server are coroutines or async generators; grpc's stubs type
    # them as the synchronous ones, hence Any.
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_unary: Any = handler.unary_unary

        async def guarded_unary_unary(request: Any, context: Context) -> Any:
            await _check(rule, context)
            return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded_unary_unary, **serializers)
    if handler.stream_unary is not None:
        stream_unary: Any = handler.stream_unary

        async def guarded_stream_unary(requests: Any, context: Context) -> Any:
            await _check(rule, context)
            return await stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(guarded_stream_unary, **serializers)
    streaming: Any = handler.unary_stream or handler.stream_stream
    factory: Any = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
    )
    if inspect.isasyncgenfunction(streaming):

        async def guarded_generator(request: Any, context: Context) -> AsyncIterator[Any]:
            await _check(rule, context)
            async for response in streaming(request, context):
                yield response

        handled: Handler = factory(guarded_generator, **serializers)
        return handled

    # A streaming method written with `context.write` (a coroutine, not a generator).
    async def guarded_writer(request: Any, context: Context) -> Any:
        await _check(rule, context)
        return await streaming(request, context)

    writer: Handler = factory(guarded_writer, **serializers)
    return writer
