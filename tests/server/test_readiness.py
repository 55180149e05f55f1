"""Issue 22 item 6: readiness that means something, on HTTP (/v2/health/ready), gRPC
(ServerReady) and grpc.health alike: not ready while a wanted model loads for the first time or
after its load failed (readiness "models", the default), and from the first moment of a
shutdown, while requests in flight finish; a busy HTTP port is reported before models load.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from testkit.edge import running_server, server_settings
from testkit.http import binary_infer, call
from testkit.repositories import BUILT_MODELS, ONNX_MODEL, ROOT, copy_model

# Starts child processes (the server, an attacker) or runs for seconds: a system test.
pytestmark = pytest.mark.system

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def readiness(server: EdgeServer) -> tuple[int, bool, int]:
    """(HTTP /v2/health/ready status, gRPC ServerReady, grpc.health status of "")."""
    async with aiohttp.ClientSession() as session:
        http = await call(session, "GET", f"http://127.0.0.1:{server.http_port}/v2/health/ready")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        ready = await kserve_grpc.GRPCInferenceServiceStub(channel).ServerReady(
            kserve.ServerReadyRequest()
        )
        await asyncio.sleep(0)  # let a pending health update run first
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return http.status, ready.ready, health.status


def add_model(repository: Path, name: str) -> Path:
    """A copy of the default model under another name."""
    staging = repository.parent / f"staging-{name}"
    copy_model(BUILT_MODELS, ONNX_MODEL, staging)
    manifest = staging / ONNX_MODEL / "1" / "manifest.json"  # a copy, not a link
    manifest.write_text(
        manifest.read_text().replace(f'"name": "{ONNX_MODEL}"', f'"name": "{name}"', 1)
    )
    return (staging / ONNX_MODEL).rename(repository / name)


def add_broken_model(repository: Path, name: str) -> None:
    model_file = add_model(repository, name) / "1" / "model.onnx"
    model_file.unlink()  # a hard link to the built model: replace, never write through it
    model_file.write_bytes(b"not an onnx graph")


async def test_not_ready_while_a_wanted_model_loads_or_after_its_load_failed(repository: Path):
    async with running_server(repository, http_port=0) as server:
        assert await readiness(server) == (200, True, SERVING)
        add_model(repository, "second")
        base = f"http://127.0.0.1:{server.http_port}"
        seen: set[int] = set()
        async with aiohttp.ClientSession() as session:
            load = asyncio.create_task(
                call(session, "POST", f"{base}/v2/repository/models/second/load", b"{}")
            )
            while not load.done():
                seen.add((await call(session, "GET", f"{base}/v2/health/ready")).status)
                await asyncio.sleep(0.01)
            assert (await load).status == 200
        assert 503 in seen, seen  # while "second" loaded for the first time
        assert await readiness(server) == (200, True, SERVING)

        add_broken_model(repository, "broken")
        async with aiohttp.ClientSession() as session:
            reply = await call(session, "POST", f"{base}/v2/repository/models/broken/load")
            assert reply.status == 400 and reply.error
            assert await readiness(server) == (503, False, NOT_SERVING)
            assert server.core.unready_models() == ["broken"]
            # The operator gives up on it: unloading it makes the server whole again.
            reply = await call(session, "POST", f"{base}/v2/repository/models/broken/unload")
            assert reply.status == 200, reply.body
        assert await readiness(server) == (200, True, SERVING)
        # A load of a model that does not exist is refused and wants nothing.
        async with aiohttp.ClientSession() as session:
            reply = await call(session, "POST", f"{base}/v2/repository/models/nope/load")
            assert reply.status == 404
        assert await readiness(server) == (200, True, SERVING)


async def test_readiness_server_ignores_models(repository: Path):
    add_broken_model(repository, "broken")
    async with running_server(repository, http_port=0, readiness="server") as server:
        assert server.core.unready_models() == []  # skipped at boot: never wanted
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.http_port}/v2/repository/models/broken/load"
            assert (await call(session, "POST", url)).status == 400
        assert server.core.unready_models() == ["broken"]
        assert await readiness(server) == (200, True, SERVING)


async def test_drain_says_not_ready_before_connections_close(repository: Path):
    server = EdgeServer(
        server_settings(repository, http_port=0, drain_delay_s=1.5, shutdown_grace_s=20)
    )
    await server.start()
    base = f"http://127.0.0.1:{server.http_port}"
    body, headers = binary_infer(np.zeros((1, 3, 224, 224), np.float32))
    infer = f"{base}/v2/models/{ONNX_MODEL}/infer"
    # A request in flight all through the drain: its body arrives in two halves.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    writer.write(
        f"POST /v2/models/{ONNX_MODEL}/infer HTTP/1.1\r\nHost: x\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.3)
    # The drain delay: not ready everywhere, alive, and still taking work.
    assert await readiness(server) == (503, False, NOT_SERVING)
    async with aiohttp.ClientSession() as session:
        assert (await call(session, "GET", f"{base}/v2/health/live")).status == 200
        assert (await call(session, "POST", infer, body, headers)).status == 200
        await asyncio.sleep(1.5)
        # After it: new work refused with a JSON 503, health still answered.
        reply = await call(session, "POST", infer, body, headers)
        assert reply.status == 503 and "shutting down" in reply.error
        assert (await call(session, "GET", f"{base}/v2/health/ready")).status == 503
    assert not stopping.done()
    writer.write(body[len(body) // 2 :])  # the request in flight completes
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    writer.close()
    await asyncio.wait_for(stopping, 30)


async def test_busy_http_port_is_reported_before_models_load(repository: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet.cli", "serve", "--repository", str(repository),
            "--port", "0", "--metrics-port", "-1", "--http-port", str(port),
            "--planner", "manifest", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
    text = stderr.decode()
    assert process.returncode == 3, text[-2000:]
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in text
    assert "loaded" not in text  # refused before any model was loaded
