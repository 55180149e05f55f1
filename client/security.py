"""Channel security for the client: insecure (loopback default), TLS, mutual TLS, auth token."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

# The server checks this metadata key (see server/grpc_api/auth.py): `authorization: Bearer T`.
AUTH_METADATA_KEY = "authorization"


class SecurityConfigError(ValueError):
    """Unusable security settings: a missing file, a client key without its certificate."""


@dataclass(frozen=True)
class ChannelSecurity:
    """How to reach a server. `tls=False` (the default) is meant for loopback and test rigs.

    Turning TLS on is the single `tls=True` (CLI: `--tls`); `ca_cert` pins a private CA instead
    of the system roots, `client_cert` + `client_key` add mutual TLS, `token` is sent as
    `authorization: Bearer <token>` on every call.
    """

    tls: bool = False
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str | None = None
    # Name the server certificate must carry when it differs from the dialled host.
    server_name: str | None = None

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTH_METADATA_KEY, f"Bearer {self.token}"),) if self.token else ()


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def open_channel(
    target: str, security: ChannelSecurity, max_message_bytes: int = 32 * 1024 * 1024
) -> grpc.aio.Channel:
    """An aio channel to `target` (host:port) with the given security and message limits."""
    options: list[tuple[str, str | int]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # gRPC's own reconnect backoff grows to 120 s; cap it near the stream's backoff so a
        # restarted server is found within seconds, not minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 5000),
        # Notice a server that vanished without closing the connection (power cut, NAT reset).
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    has_client_pair = security.client_cert is not None or security.client_key is not None
    if not security.tls:
        if has_client_pair or security.ca_cert is not None:
            raise SecurityConfigError("certificates given but TLS is off; add --tls")
        if not is_loopback(target):
            # Allowed (a lab network), but said out loud: frames and any token travel in clear.
            log.warning("plaintext gRPC to %s, which is not loopback; use TLS (--tls)", target)
        return grpc.aio.insecure_channel(target, options=options)
    if (security.client_cert is None) != (security.client_key is None):
        raise SecurityConfigError("mutual TLS needs both a client certificate and its key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(security.ca_cert, "CA certificate"),
        private_key=_read(security.client_key, "client key"),
        certificate_chain=_read(security.client_cert, "client certificate"),
    )
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)


def is_loopback(target: str) -> bool:
    """Whether `host:port` (or `[v6]:port`, `unix:...`) stays on this machine."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or "]" in target else target
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
