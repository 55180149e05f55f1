"""Server TLS: load and check the certificate, key and optional client CA before serving.

Checking at start turns a wrong path or a key that does not match its certificate into one clear
message, instead of every client failing its handshake with an opaque UNAVAILABLE. The same
checked files serve every listener: gRPC credentials (`server_credentials`) and the HTTP port's
`ssl.SSLContext` (`http_ssl_context`), so both demand the same certificates of their clients.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.settings import ServerSettings

# cryptography is imported where TLS is configured: 9 MB of RSS a plaintext server never uses.


class TlsConfigError(ValueError):
    """Unusable TLS settings; the message names the file and what is wrong with it."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS {what} {path}: {exc.strerror}") from exc


def _public_bytes(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public_key = key.public_key()  # type: ignore[attr-defined]
    encoded: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return encoded


@dataclass(frozen=True)
class TlsMaterial:
    """Checked PEM files: the certificate matches the key, the client CA parses."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path | None
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None


def load_material(
    cert_path: Path, key_path: Path, client_ca_path: Path | None = None
) -> TlsMaterial:
    """Read and check the PEM files; cryptography is imported only here, where TLS is on."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

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
    return TlsMaterial(cert_path, key_path, client_ca_path, cert_pem, key_pem, client_ca_pem)


def grpc_credentials(material: TlsMaterial) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; a client CA makes clients present a cert it signed."""
    return grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)],
        root_certificates=material.client_ca_pem,
        require_client_auth=material.client_ca_pem is not None,
    )


def ssl_context(material: TlsMaterial) -> ssl.SSLContext:
    """The HTTP port's TLS: the same certificate and, with a client CA, the same demand for a
    client certificate signed by it (the handshake fails without one, as on gRPC)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(material.cert_path, material.key_path)
    if material.client_ca_pem is not None:
        context.load_verify_locations(cadata=material.client_ca_pem.decode("ascii", "replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_server_credentials(
    cert_path: Path, key_path: Path, client_ca_path: Path | None = None
) -> grpc.ServerCredentials:
    return grpc_credentials(load_material(cert_path, key_path, client_ca_path))


def settings_material(settings: ServerSettings) -> TlsMaterial | None:
    """The checked TLS files the settings name, or None for plaintext (the loopback default)."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise TlsConfigError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise TlsConfigError("TLS needs both tls_cert and tls_key")
    return load_material(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """gRPC TLS credentials from the settings, or None for plaintext."""
    material = settings_material(settings)
    return None if material is None else grpc_credentials(material)


def http_ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The HTTP port's TLS from the same settings, or None for plaintext."""
    material = settings_material(settings)
    return None if material is None else ssl_context(material)


def add_port(server: grpc.aio.Server, address: str, settings: ServerSettings) -> int:
    """Bind `address` with TLS when configured, plaintext otherwise; returns the bound port."""
    credentials = server_credentials(settings)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)
