"""Server TLS: load and check the certificate, key and optional client CA before serving.

Checking at start turns a wrong path or a key that does not match its certificate into one clear
message, instead of every client failing its handshake with an opaque UNAVAILABLE.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server.settings import ServerSettings


class TlsConfigError(ValueError):
    """Unusable TLS settings; the message names the file and what is wrong with it."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS {what} {path}: {exc.strerror}") from exc


def _public_bytes(key: object) -> bytes:
    public_key = key.public_key()  # type: ignore[attr-defined]
    encoded: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return encoded


def load_server_credentials(
    cert_path: Path, key_path: Path, client_ca_path: Path | None = None
) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; a client CA makes clients present a cert it signed."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key")
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise TlsConfigError(f"TLS certificate {cert_path} is not a PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(f"TLS key {key_path} is not an unencrypted PEM private key") from exc
    if _public_bytes(key) != _public_bytes(certificate):
        raise TlsConfigError(f"TLS key {key_path} does not match certificate {cert_path}")
    client_ca_pem = None
    if client_ca_path is not None:
        client_ca_pem = _read(client_ca_path, "client CA")
        try:
            x509.load_pem_x509_certificates(client_ca_pem)
        except ValueError as exc:
            raise TlsConfigError(f"TLS client CA {client_ca_path} is not PEM") from exc
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=client_ca_pem is not None,
    )


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for plaintext (the loopback default)."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise TlsConfigError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise TlsConfigError("TLS needs both tls_cert and tls_key")
    return load_server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def add_port(server: grpc.aio.Server, address: str, settings: ServerSettings) -> int:
    """Bind `address` with TLS when configured, plaintext otherwise; returns the bound port."""
    credentials = server_credentials(settings)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)
