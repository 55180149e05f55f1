"""TLS, mutual TLS and the auth token, end to end with generated certificates."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.kserve import KServeClient
from client.security import ChannelSecurity, SecurityConfigError, open_channel
from client.stream import (
    BackoffPolicy,
    FrameResult,
    FrameStreamClient,
    StreamConfig,
    StreamFailed,
)
from server.app import EdgeServer
from server.tls import TlsConfigError
from testkit.certificates import Certificates
from testkit.edge import running_server, server_settings
from testkit.media import EXPECTED_TOP1, photo_frames
from testkit.repositories import ONNX_MODEL

TOKEN = "camera-fleet-secret"
# One attempt: a refused handshake must come back as an error at once, not a retry loop.
NO_RETRY = BackoffPolicy(max_attempts=1)


async def classify_chelsea(port: int, security: ChannelSecurity) -> list[FrameResult]:
    """Stream one photo; raises StreamFailed if the server refuses the stream."""
    async with open_channel(f"127.0.0.1:{port}", security) as channel:
        client = FrameStreamClient(
            channel, StreamConfig(ONNX_MODEL, backoff=NO_RETRY), security.call_metadata()
        )
        events = [event async for event in client.stream(photo_frames("chelsea"))]
    return [event for event in events if isinstance(event, FrameResult)]


def assert_cat(results: list[FrameResult]) -> None:
    assert len(results) == 1
    assert results[0].labels[0].label in EXPECTED_TOP1["chelsea"]


async def refused(port: int, security: ChannelSecurity) -> StreamFailed:
    with pytest.raises(StreamFailed) as failure:
        # A refusal is prompt; the timeout turns a hang into a failure instead of a stuck suite.
        await asyncio.wait_for(classify_chelsea(port, security), 20)
    return failure.value


async def test_tls_serves_a_client_that_trusts_the_ca(
    repository: Path, certificates: Certificates
) -> None:
    tls = {"tls_cert": certificates.server_cert, "tls_key": certificates.server_key}
    async with running_server(repository, **tls) as server:
        assert_cat(
            await classify_chelsea(server.port, ChannelSecurity(tls=True, ca_cert=certificates.ca))
        )
        plaintext = await refused(server.port, ChannelSecurity())
        untrusted = await refused(server.port, ChannelSecurity(tls=True))  # system roots only
    assert plaintext.code is grpc.StatusCode.UNAVAILABLE
    assert untrusted.code is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_from_the_trusted_ca(
    repository: Path, certificates: Certificates
) -> None:
    mtls = {
        "tls_cert": certificates.server_cert,
        "tls_key": certificates.server_key,
        "tls_client_ca": certificates.ca,
    }
    camera = ChannelSecurity(
        tls=True,
        ca_cert=certificates.ca,
        client_cert=certificates.client_cert,
        client_key=certificates.client_key,
    )
    async with running_server(repository, **mtls) as server:
        assert_cat(await classify_chelsea(server.port, camera))
        anonymous = await refused(server.port, ChannelSecurity(tls=True, ca_cert=certificates.ca))
        rogue = await refused(
            server.port,
            ChannelSecurity(
                tls=True,
                ca_cert=certificates.ca,
                client_cert=certificates.rogue_client_cert,
                client_key=certificates.rogue_client_key,
            ),
        )
    assert anonymous.code is grpc.StatusCode.UNAVAILABLE
    assert rogue.code is grpc.StatusCode.UNAVAILABLE


async def test_auth_token_is_required_and_checked(repository: Path) -> None:
    async with running_server(repository, auth_token=TOKEN) as server:
        assert_cat(await classify_chelsea(server.port, ChannelSecurity(token=TOKEN)))
        missing = await refused(server.port, ChannelSecurity())
        wrong = await refused(server.port, ChannelSecurity(token="guess"))

        # The KServe v2 service is behind the same check; health checks stay open.
        image = np.zeros((1, 3, 224, 224), np.float32)
        async with open_channel(f"127.0.0.1:{server.port}", ChannelSecurity()) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await KServeClient(channel).infer(ONNX_MODEL, {"input": image})
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service=""))
        async with open_channel(f"127.0.0.1:{server.port}", ChannelSecurity(token=TOKEN)) as ch:
            outputs = await KServeClient(ch, ChannelSecurity(token=TOKEN).call_metadata()).infer(
                ONNX_MODEL, {"input": image}
            )
    assert missing.code is grpc.StatusCode.UNAUTHENTICATED
    assert "missing auth token" in str(missing)
    assert wrong.code is grpc.StatusCode.UNAUTHENTICATED
    assert "invalid auth token" in str(wrong)
    assert unary.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert outputs["logits"].shape == (1, 1000)


def test_bad_tls_files_are_named_before_serving(
    repository: Path, certificates: Certificates
) -> None:
    with pytest.raises(TlsConfigError, match="does not match certificate"):
        EdgeServer(
            server_settings(
                repository, tls_cert=certificates.server_cert, tls_key=certificates.client_key
            )
        )
    with pytest.raises(TlsConfigError, match="needs both"):
        EdgeServer(server_settings(repository, tls_cert=certificates.server_cert))
    with pytest.raises(SecurityConfigError, match="cannot read client key"):
        open_channel(
            "127.0.0.1:1",
            ChannelSecurity(
                tls=True, client_cert=certificates.client_cert, client_key=Path("/nonexistent")
            ),
        )


# The edgefleet CLI as a child process.
@pytest.mark.system
async def test_cli_reports_a_bad_token_as_unauthenticated(repository: Path) -> None:
    import sys

    from testkit.repositories import ROOT

    async with running_server(repository, auth_token=TOKEN) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet.cli", "stream", "pattern", "--duration", "5",
            "--server", f"127.0.0.1:{server.port}", "--model", ONNX_MODEL, "--token", "guess",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert "UNAUTHENTICATED: invalid auth token" in " ".join(stderr.decode().split())


async def test_a_tls_client_against_a_plaintext_server_fails_promptly(
    repository: Path, certificates: Certificates
) -> None:
    async with running_server(repository) as server:
        failure = await refused(server.port, ChannelSecurity(tls=True, ca_cert=certificates.ca))
    assert failure.code is grpc.StatusCode.UNAVAILABLE


async def test_plaintext_is_flagged_off_loopback(caplog: pytest.LogCaptureFixture) -> None:
    from client.security import is_loopback

    assert all(map(is_loopback, ["127.0.0.1:8001", "localhost:1", "[::1]:5", "unix:/tmp/s"]))
    assert not any(map(is_loopback, ["10.0.0.7:8001", "cam.local:1"]))
    await open_channel("10.0.0.7:8001", ChannelSecurity()).close()  # lazy: nothing connects
    assert "plaintext gRPC to 10.0.0.7:8001, which is not loopback" in caplog.text
