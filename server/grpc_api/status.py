"""Domain errors to gRPC status codes (each error declares its code in `server.errors`), and
the one decorator that applies them."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc

from server.errors import INTERNAL_MESSAGE, EdgeError
from server.observability.failure_log import FailureLog

log = logging.getLogger(__name__)
# One line per kind of unexpected error and 10 s, with a count; tracebacks at DEBUG.
_failures = FailureLog(log)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC code a domain error declares (`server.errors`); INTERNAL for anything else."""
    if isinstance(error, EdgeError):
        return grpc.StatusCode[error.grpc_status]
    return grpc.StatusCode.INTERNAL


def public_message(error: BaseException) -> str:
    """Domain errors explain themselves; anything else is never leaked to the client."""
    if isinstance(error, EdgeError) and status_for(error) is not grpc.StatusCode.INTERNAL:
        return str(error)
    return INTERNAL_MESSAGE


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Turn domain errors raised by a servicer method (unary or streaming) into gRPC statuses."""

    def answer(error: Exception) -> tuple[grpc.StatusCode, str]:
        code = status_for(error)
        if code is grpc.StatusCode.INTERNAL:
            _failures.failed(f"unexpected error in {method.__qualname__}", error)
        return code, public_message(error)

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async with contextlib.aclosing(method(self, request, context)) as responses:
                    async for response in responses:
                        yield response
                return
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                code, message = answer(exc)
            _set_status(context, code, message)

        return cast(F, stream_wrapper)

    @functools.wraps(method)
    async def unary_wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = answer(exc)
        _set_status(context, code, message)
        return None  # grpc sends no message with a status that is not OK

    return cast(F, unary_wrapper)


def _set_status(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str
) -> None:
    """Answer with a status instead of `context.abort`, and outside the `except` block.

    Both keep the request out of reference cycles: the AbortError that `abort` raises is kept
    by grpc's own frames, and an error still being handled has a traceback holding the
    handler's frame; either way the request (up to the message limit) stays until the garbage
    collector runs. Twenty refused 30 MB requests held 700 MB that way."""
    context.set_code(code)
    context.set_details(message)
