"""The one access rule every listener applies: the auth token, checked the same way on gRPC
(`server.grpc_api.auth`) and HTTP (`server.http_api.guard`). TLS material is loaded once for
both by `server.tls`.

Health checks stay open on both transports, so a load balancer or an orchestrator can probe
the server without the secret; everything else, repository load and unload included, needs the
token when one is set.
"""

from __future__ import annotations

import hmac

from server.settings import ServerSettings

# gRPC metadata key and HTTP header (HTTP header names are case-insensitive).
AUTH_HEADER = "authorization"


class TokenCheck:
    """Compares a presented `authorization` value with `Bearer <token>` in constant time."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty auth token would accept anyone")
        self._expected = f"Bearer {token}".encode()

    def refusal(self, presented: str | bytes | None) -> str | None:
        """None when `presented` carries the token; otherwise the reason to refuse, fit for a
        client (it never echoes what was presented)."""
        if presented is None:
            return f"missing auth token: send '{AUTH_HEADER}: Bearer <token>'"
        raw = presented.encode("utf-8", "replace") if isinstance(presented, str) else presented
        if hmac.compare_digest(raw, self._expected):
            return None
        return "invalid auth token"


def token_check(settings: ServerSettings) -> TokenCheck | None:
    """The token check these settings demand, or None when no token is set."""
    if settings.auth_token is None:
        return None
    return TokenCheck(settings.auth_token.get_secret_value())
