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
from server.observability.failure_log import FailureLog
from server.http_api.responses import error_response

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


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
