"""X.509 for the fleet: the controller's own CA, its server certificate, device and admin client
certificates. The common name says who a peer is: `device:<id>` or `admin:<name>`."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEVICE_PREFIX = "device:"
ADMIN_PREFIX = "admin:"
CA_DAYS = 3650
LEAF_DAYS = 825


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def common_name(certificate_pem_bytes: bytes) -> str:
    certificate = x509.load_pem_x509_certificate(certificate_pem_bytes)
    values = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(data)


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate)

    def derived_secret(self, purpose: str) -> bytes:
        """A 32-byte secret for `purpose`, the same on every replica sharing this CA (HKDF over
        the CA's private key): nothing to distribute, and not stored anywhere."""
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        private = self.key.private_numbers().private_value.to_bytes(66, "big")
        kdf = HKDF(hashes.SHA256(), 32, salt=b"edgefleet", info=purpose.encode())
        return kdf.derive(private)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC key")
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        directory.mkdir(parents=True, exist_ok=True)
        key = new_private_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet controller CA")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        _write_private(key_path, private_key_pem(key))
        cert_path.write_bytes(certificate_pem(certificate))
        return cls(key, certificate)

    def _leaf(
        self,
        subject_cn: str,
        public_key: ec.EllipticCurvePublicKey,
        usage: x509.ObjectIdentifier,
        hostnames: tuple[str, ...] = (),
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hostnames:
            names: list[x509.GeneralName] = []
            for host in hostnames:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def server_credentials(
        self, directory: Path, hostnames: tuple[str, ...]
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for the controller, reissued when the hostnames change."""
        key_path, cert_path = directory / "server.key", directory / "server.pem"
        wanted = ",".join(sorted(hostnames))
        marker = directory / "server.hosts"
        if key_path.exists() and marker.exists() and marker.read_text() == wanted:
            return key_path.read_bytes(), cert_path.read_bytes()
        key = new_private_key()
        certificate = self._leaf(
            hostnames[0], key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, hostnames
        )
        _write_private(key_path, private_key_pem(key))
        cert_path.write_bytes(certificate_pem(certificate))
        marker.write_text(wanted)
        return key_path.read_bytes(), cert_path.read_bytes()

    def sign_request(self, csr_pem: bytes, subject_cn: str) -> bytes:
        """Issue a client certificate for the CSR's key, with a common name the CA chooses."""
        request = x509.load_pem_x509_csr(csr_pem)
        if not request.is_signature_valid:
            raise ValueError("the certificate request's signature is invalid")
        public_key = request.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ValueError("the certificate request must carry an EC key")
        return certificate_pem(self._leaf(subject_cn, public_key, ExtendedKeyUsageOID.CLIENT_AUTH))

    def issue_client(self, subject_cn: str) -> tuple[bytes, bytes]:
        """A fresh key and client certificate: (key PEM, certificate PEM)."""
        key = new_private_key()
        certificate = self._leaf(subject_cn, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH)
        return private_key_pem(key), certificate_pem(certificate)


def public_key_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of a public key's SubjectPublicKeyInfo: what a revocation names."""
    encoded = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(encoded).hexdigest()


def certificate_key_sha256(certificate_pem: bytes) -> str:
    return public_key_sha256(x509.load_pem_x509_certificate(certificate_pem).public_key())


def request_key_sha256(csr_pem: bytes) -> str:
    """The key fingerprint of a certificate request (ValueError if it is not one)."""
    return public_key_sha256(x509.load_pem_x509_csr(csr_pem).public_key())
