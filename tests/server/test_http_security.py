"""Issue 22 item 1: the HTTP port shares the gRPC port's token and TLS (mutual TLS included).

Every protected endpoint (infer, config, repository index, load, unload) is refused without
credentials and works with them; health stays open, as grpc.health does.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from server.app import EdgeServer
from server.tls import TlsConfigError, load_server_credentials
from testkit.certificates import Certificates
from testkit.edge import running_server, server_settings
from testkit.http import binary_infer, call
from testkit.repositories import ONNX_MODEL

TOKEN = "http-door-secret"
# The session fixture that writes a private CA, server, client and rogue certificates.


def protected_calls(base: str) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    body, headers = binary_infer(np.zeros((1, 3, 224, 224), np.float32))
    repository = f"{base}/v2/repository"
    return [
        ("POST", f"{base}/v2/models/{ONNX_MODEL}/infer", body, headers),
        ("GET", f"{base}/v2/models/{ONNX_MODEL}/config", None, {}),
        ("GET", f"{base}/v2/models/{ONNX_MODEL}/stats", None, {}),
        ("GET", f"{base}/v2/models/{ONNX_MODEL}", None, {}),
        ("GET", f"{base}/v2", None, {}),
        ("POST", f"{repository}/index", b"{}", {}),
        ("POST", f"{repository}/models/{ONNX_MODEL}/unload", b"{}", {}),
        ("POST", f"{repository}/models/{ONNX_MODEL}/load", b"{}", {}),
    ]


async def all_work(session: aiohttp.ClientSession, base: str, auth: dict[str, str]) -> None:
    for method, url, body, headers in protected_calls(base):
        reply = await call(session, method, url, body, {**headers, **auth})
        assert reply.status == 200, (url, reply.status, reply.body[:300])
    reply = await call(session, "GET", f"{base}/v2/models/{ONNX_MODEL}/ready", None, auth)
    assert reply.status == 200  # loaded again after the unload above


async def test_token_guards_every_endpoint_but_health(repository: Path) -> None:
    async with (
        running_server(repository, http_port=0, auth_token=TOKEN) as server,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{server.http_port}"
        for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            for method, url, body, headers in protected_calls(base):
                reply = await call(session, method, url, body, {**headers, **wrong})
                assert reply.status == 401, (url, wrong, reply.status)
                assert "auth token" in reply.error
                assert TOKEN not in reply.body.decode()
        # Nothing was unloaded by the refused calls.
        assert server.core.model_ready(ONNX_MODEL)
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert (await call(session, "GET", base + path)).status == 200
        await all_work(session, base, {"Authorization": f"Bearer {TOKEN}"})


def client_tls(
    certificates: Certificates, *, cert: Path | None, key: Path | None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def mtls_server(repository: Path, certificates: Certificates) -> AsyncIterator[EdgeServer]:
    async with running_server(
        repository,
        http_port=0,
        metrics_port=0,
        tls_cert=certificates.server_cert,
        tls_key=certificates.server_key,
        tls_client_ca=certificates.ca,
    ) as server:
        yield server


async def refused_handshake(url: str, context: ssl.SSLContext | None) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(url, ssl=context if context is not None else True):
                pass


async def test_mutual_tls_needs_a_client_certificate_from_the_trusted_ca(
    mtls_server: EdgeServer, certificates: Certificates
) -> None:
    port = mtls_server.http_port
    config = f"https://127.0.0.1:{port}/v2/models/{ONNX_MODEL}/config"
    await refused_handshake(f"http://127.0.0.1:{port}/v2/models/{ONNX_MODEL}/config", None)
    await refused_handshake(config, client_tls(certificates, cert=None, key=None))
    rogue = client_tls(
        certificates, cert=certificates.rogue_client_cert, key=certificates.rogue_client_key
    )
    await refused_handshake(config, rogue)
    camera = client_tls(certificates, cert=certificates.client_cert, key=certificates.client_key)
    connector = aiohttp.TCPConnector(ssl=camera)
    async with aiohttp.ClientSession(connector=connector) as session:
        await all_work(session, f"https://127.0.0.1:{port}", {})


async def test_tls_serves_https_and_refuses_plaintext(
    repository: Path, certificates: Certificates
) -> None:
    tls = {"tls_cert": certificates.server_cert, "tls_key": certificates.server_key}
    async with running_server(repository, http_port=0, **tls) as server:
        port = server.http_port
        await refused_handshake(f"http://127.0.0.1:{port}/v2/health/ready", None)
        trusting = client_tls(certificates, cert=None, key=None)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session:
            await all_work(session, f"https://127.0.0.1:{port}", {})


async def test_plaintext_http_beside_tls_grpc_only_on_request(
    repository: Path, certificates: Certificates
) -> None:
    credentials = load_server_credentials(certificates.server_cert, certificates.server_key)
    server = EdgeServer(server_settings(repository, http_port=0), server_credentials=credentials)
    with pytest.raises(TlsConfigError, match="http_plaintext"):
        await server.start()
    plaintext = EdgeServer(
        server_settings(repository, http_port=0, http_plaintext=True),
        server_credentials=credentials,
    )
    await plaintext.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{plaintext.http_port}/v2/health/ready"
            assert (await call(session, "GET", url)).status == 200
    finally:
        await plaintext.stop(grace_s=0.5)


async def test_metrics_port_shares_the_token(repository: Path) -> None:
    """The Prometheus port is a door like the others: no token, no metrics."""
    async with (
        running_server(repository, metrics_port=0, auth_token=TOKEN) as server,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            reply = await call(session, "GET", url, None, wrong)
            assert reply.status == 401, (wrong, reply.status)
            assert b"edgefleet_" not in reply.body
        reply = await call(session, "GET", url, None, {"Authorization": f"Bearer {TOKEN}"})
        assert reply.status == 200
        assert b"edgefleet_build_info" in reply.body


async def test_metrics_port_shares_mutual_tls(
    mtls_server: EdgeServer, certificates: Certificates
) -> None:
    port = mtls_server.metrics_port
    assert port > 0
    await refused_handshake(f"http://127.0.0.1:{port}/metrics", None)
    rogue = client_tls(
        certificates, cert=certificates.rogue_client_cert, key=certificates.rogue_client_key
    )
    await refused_handshake(f"https://127.0.0.1:{port}/metrics", rogue)
    camera = client_tls(certificates, cert=certificates.client_cert, key=certificates.client_key)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=camera)) as session:
        reply = await call(session, "GET", f"https://127.0.0.1:{port}/metrics")
        assert reply.status == 200
        assert b"edgefleet_build_info" in reply.body
