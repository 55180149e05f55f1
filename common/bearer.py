"""The bearer-token rule shared by every door that takes a token: the edge server's gRPC, HTTP
and metrics listeners, and the fleet controller's metrics listener."""

from __future__ import annotations

import hmac

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
