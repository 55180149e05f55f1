"""The one access rule every listener applies: the auth token, checked the same way on gRPC
(`server.grpc_api.auth`) and HTTP (`server.http_api.guard`). TLS material is loaded once for
both by `server.tls`. The token comparison itself is common.bearer's, shared with the fleet
controller.

Health checks stay open on both transports, so a load balancer or an orchestrator can probe
the server without the secret; everything else, repository load and unload included, needs the
token when one is set.
"""

from __future__ import annotations

from common.bearer import AUTH_HEADER, TokenCheck
from server.settings import ServerSettings

__all__ = ["AUTH_HEADER", "TokenCheck", "token_check"]


def token_check(settings: ServerSettings) -> TokenCheck | None:
    """The token check these settings demand, or None when no token is set."""
    if settings.auth_token is None:
        return None
    return TokenCheck(settings.auth_token.get_secret_value())
