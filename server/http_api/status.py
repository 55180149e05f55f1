"""Domain errors to HTTP statuses (each error declares its status in `server.errors`) and the
one middleware that answers every failure as Triton does: a JSON `{"error": ...}` body.

A client's mistake is a 4xx with its message and one log line per kind every 10 s; an
unexpected error is a 500 with a generic message and one throttled line (traceback at DEBUG).
aiohttp's own refusals (no such route, wrong method, body too large) get the same JSON body.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from server.errors import INTERNAL_MESSAGE, EdgeError
from server.http_api.responses import error_response
from server.observability.failure_log import FailureLog

log = logging.getLogger(__name__)
_unexpected = FailureLog(log)
_refused = FailureLog(log, level=logging.INFO)


def status_for(error: BaseException) -> int:
    """The HTTP status a domain error declares (`server.errors`); 500 for anything else."""
    return error.http_status if isinstance(error, EdgeError) else 500


def _route(request: web.Request) -> str:
    """The route's pattern (bounded), not the path (a client can send any number of paths)."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else '?'}"


# After an early answer, aiohttp reads and discards the rest of the body for a while, so the
# client can read the answer. Past this many unread bytes that drain is not worth its CPU (20
# clients each still sending 31 MiB kept the event loop busy for seconds): the answer is sent
# and the connection closed at once.
DRAIN_LIMIT_BYTES = 1 << 20


def _unread_body_is_large(request: web.Request) -> bool:
    if request.content.is_eof():
        return False
    if request.content_length is None:
        return True  # chunked: no telling how much is still coming
    return request.content_length - request.content.total_bytes > DRAIN_LIMIT_BYTES


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await _answer(request, handler)
    if response.status >= 400 and _unread_body_is_large(request):
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()  # sends what is buffered, then closes
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path[:200]}"
        _refused.failed(f"HTTP {exc.status} for {request.method}", exc)
        return error_response(message, exc.status, headers)
    except web.RequestPayloadError as exc:  # a body aiohttp cannot decode (Content-Encoding)
        _refused.failed(f"HTTP 400 for {_route(request)}", exc)
        return error_response(f"request body cannot be read: {str(exc)[:200]}", 400)
    except Exception as exc:
        status = status_for(exc)
        if status == 500:
            _unexpected.failed(f"unexpected error in {_route(request)}", exc)
            return error_response(INTERNAL_MESSAGE, 500)
        _refused.failed(f"HTTP {status} for {_route(request)}", exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(str(exc), status, headers)
