"""Client fixtures: servers with chosen settings, test certificates, a video made from photos."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.app import EdgeServer
from tests.conftest import ROOT, photo, server_settings

# The photos the test video shows, in order, and how many frames each one lasts.
VIDEO_SCENES = (("chelsea", 6), ("coffee", 6))
VIDEO_FPS = 10.0
VIDEO_FRAMES = sum(frames for _, frames in VIDEO_SCENES)


@contextlib.asynccontextmanager
async def running_server(repository: Path, **overrides: object) -> AsyncIterator[EdgeServer]:
    server = EdgeServer(server_settings(repository, **overrides))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace_s=0.5)


@pytest.fixture(scope="session")
def test_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MJPG .avi written with OpenCV (the client's video library) from skimage photos."""
    path = tmp_path_factory.mktemp("video") / "scenes.avi"
    size = (320, 240)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), VIDEO_FPS, size)
    assert writer.isOpened(), "OpenCV has no MJPG writer"
    for name, frames in VIDEO_SCENES:
        image = cv2.resize(cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR), size)
        for _ in range(frames):
            writer.write(image)
    writer.release()
    return path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # Signed by a CA the server does not trust.
    rogue_client_cert: Path
    rogue_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A private CA, a server cert for 127.0.0.1/localhost, a client cert, and a rogue one."""
    folder = tmp_path_factory.mktemp("certs")

    def pem(cert: x509.Certificate, name: str) -> Path:
        path = folder / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key, rogue_ca_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    server_key, client_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "abc")
    ca = _issue("edgefleet test CA", ca_key, "edgefleet test CA", ca_key, ca=True)
    return Certificates(
        ca=pem(ca, "ca.pem"),
        server_cert=pem(
            _issue("edge", server_key, "edgefleet test CA", ca_key, server=True), "server.pem"
        ),  # fmt: skip
        server_key=_write_key(server_key, folder / "server.key"),
        client_cert=pem(_issue("camera-1", client_key, "edgefleet test CA", ca_key), "client.pem"),
        client_key=_write_key(client_key, folder / "client.key"),
        rogue_client_cert=pem(_issue("rogue", rogue_key, "rogue CA", rogue_ca_key), "rogue.pem"),
        rogue_client_key=_write_key(rogue_key, folder / "rogue.key"),
    )


@dataclass(frozen=True)
class BuiltClients:
    """Each language's camera example, run as `command + [--json] HOST:PORT MODEL FILE...`."""

    commands: dict[str, list[str]]
    # Language -> why `make stubs` could not build it (its toolchain is not installable here).
    skipped: dict[str, str]

    def command(self, language: str) -> list[str]:
        if language in self.skipped:
            pytest.skip(f"{language} camera not built: {self.skipped[language]}")
        return self.commands[language]


@pytest.fixture(scope="session")
def built_clients() -> BuiltClients:
    """`make stubs`' script, once per session: installs the toolchains it needs from Debian,
    regenerates every language's code from protos/ and rebuilds only what changed (the first run
    on a fresh machine compiles everything; later ones take seconds). C++ and Node are required:
    a toolchain that will not install there is a failure, not a skip. Go and Java are skipped,
    with the script's reason, only where Debian cannot provide them."""
    completed = subprocess.run(
        ["bash", str(ROOT / "scripts/gen_stubs.sh")],
        env={**os.environ, "STUBS_QUICK": "1"},  # buf has tests of its own
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    skipped = {}
    for line in completed.stdout.splitlines():
        language, _, reason = line.removeprefix("skipped: ").partition(": ")
        if line.startswith("skipped: ") and language in ("go", "java"):
            skipped[language] = reason
    commands = {
        "python": [sys.executable, str(ROOT / "client/examples/python/camera.py")],
        "node": ["node", str(ROOT / "client/examples/node/camera.js")],
        "cpp": [str(ROOT / "build/examples/cpp/edgefleet_camera")],
        "go": [str(ROOT / "build/examples/go/edgefleet_camera")],
        "java": [str(ROOT / "build/examples/java/edgefleet_camera")],
    }
    for language in ("cpp", "go", "java"):
        if language not in skipped:
            assert Path(commands[language][0]).is_file(), f"no {language} camera:\n{output}"
    return BuiltClients(commands, skipped)
