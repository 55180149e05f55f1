"""The dashboard's browser sessions: short-lived, signed, valid on every replica.

Signing in with the dashboard token gives a session cookie that is not the token: an expiry, a
random id and an HMAC-SHA256 over both, under a key every replica derives from the fleet CA's
private key (fleet/pki.py, `derived_secret`): a session made by one replica is accepted by the
others behind a load balancer, and nothing of it is in the database. A session lasts `ttl_s`
and is renewed while the page is open (any request in its second half gets a fresh cookie);
signing out clears it. Each session has its own CSRF token (an HMAC of its id under the same
key), which the dashboard's POSTs (promote, pause, abort, sign out) must carry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

TTL_S = 15 * 60.0


@dataclass(frozen=True)
class Session:
    session_id: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DashboardSessions:
    def __init__(
        self, key: bytes, ttl_s: float = TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        if len(key) < 32:
            raise ValueError("a session key must be at least 32 bytes")
        self._key = key
        self.ttl_s = ttl_s
        self._clock = clock

    def _sign(self, purpose: str, message: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\n{message}".encode(), hashlib.sha256)
        return _b64(digest.digest())

    def issue(self, renewing: Session | None = None) -> tuple[str, Session]:
        """A new session and its cookie value; `renewing` keeps that session's id (and so its
        CSRF token: the open page's forms stay valid) with a new expiry."""
        session_id = renewing.session_id if renewing else secrets.token_urlsafe(16)
        session = Session(session_id, float(int(self._clock() + self.ttl_s)))
        payload = f"{int(session.expires_at)}.{session.session_id}"
        return f"{payload}.{self._sign('session', payload)}", session

    def verify(self, cookie: str) -> Session | None:
        """The session a cookie names, or None if forged, altered or expired."""
        expires, _, rest = cookie.partition(".")
        session_id, _, signature = rest.partition(".")
        if not (expires and session_id and signature):
            return None
        expected = self._sign("session", f"{expires}.{session_id}")
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        try:
            expires_at = float(int(expires))
        except ValueError:
            return None
        if expires_at <= self._clock():
            return None
        return Session(session_id, expires_at)

    def renewal_due(self, session: Session) -> bool:
        return session.expires_at - self._clock() < self.ttl_s / 2

    def csrf_token(self, session: Session) -> str:
        return self._sign("csrf", session.session_id)

    def csrf_ok(self, session: Session, offered: str) -> bool:
        return bool(offered) and hmac.compare_digest(
            offered.encode(), self.csrf_token(session).encode()
        )
