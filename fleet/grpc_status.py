"""The one table from fleet errors to gRPC codes, and the decorator that applies it.

Unexpected errors are logged with their traceback and answered with a generic INTERNAL: their
text may hold paths or secrets.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from fleet.errors import BundleRejected, Conflict, FleetError, InvalidRequest, NotFound
from fleet.errors import PermissionDenied as FleetPermissionDenied
from fleet.pki import certificate_key_sha256

logger = logging.getLogger(__name__)

STATUS: dict[type[FleetError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    BundleRejected: grpc.StatusCode.INVALID_ARGUMENT,
    FleetPermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(error: FleetError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return grpc.StatusCode.INTERNAL


async def _abort(error: Exception, context: grpc.aio.ServicerContext[Any, Any], name: str) -> None:
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if isinstance(error, FleetError):
        await context.abort(status_for(error), str(error))
    logger.exception("%s failed", name)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the controller log")


def unary(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except Exception as error:  # noqa: BLE001 - mapped or logged in _abort
            await _abort(error, context, method.__name__)

    return wrapper


def streaming(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as error:  # noqa: BLE001 - mapped or logged in _abort
            await _abort(error, context, method.__name__)

    return wrapper


@dataclass(frozen=True)
class Peer:
    """The verified client certificate of a call: its common name and the SHA-256 of its
    public key ("" without a certificate)."""

    common_name: str
    public_key_sha256: str


def peer(context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
    auth = context.auth_context()
    names = list(auth.get("x509_common_name", []))
    certificates = list(auth.get("x509_pem_cert", []))
    return Peer(
        common_name=names[0].decode() if names else "",
        public_key_sha256=certificate_key_sha256(certificates[0]) if certificates else "",
    )


def peer_common_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The verified client certificate's common name, or "" without one."""
    names = list(context.auth_context().get("x509_common_name", []))
    return names[0].decode() if names else ""
