"""A controller that stops sending in the middle of a bundle download (stalled, or a half-open
connection) must not hold the agent's install forever: the attempt ends after the idle bound,
what arrived stays on disk, and the next attempt resumes from it and verifies the whole.

The stalled controller is a real gRPC server that implements only Download and misbehaves on
purpose: it sends one chunk and then nothing, without closing the stream."""

from __future__ import annotations

import asyncio
import hashlib
import os

import grpc
import pytest

from fleet.agent.download import fetch_bundle
from protos.edgefleet.fleet.v1 import agent_pb2, agent_pb2_grpc

BUNDLE = os.urandom(300_000)
CHUNK = 100_000


class _Controller(agent_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    def __init__(self, *, stall_after_first: bool) -> None:
        self.stall_after_first = stall_after_first
        self.offsets: list[int] = []

    async def Download(self, request, context):  # noqa: N802 - the gRPC method name
        self.offsets.append(request.offset)
        offset = request.offset
        while offset < len(BUNDLE):
            data = BUNDLE[offset : offset + CHUNK]
            yield agent_pb2.DownloadResponse(offset=offset, data=data, total_size=len(BUNDLE))
            offset += len(data)
            if self.stall_after_first:
                await asyncio.Event().wait()  # never sends again, never closes


async def _serve(servicer: _Controller) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_a_stalled_download_gives_up_keeps_what_arrived_and_resumes(tmp_path):
    digest = hashlib.sha256(BUNDLE).hexdigest()
    stalled = _Controller(stall_after_first=True)
    server, port = await _serve(stalled)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            with pytest.raises(ConnectionError, match="no bundle data for"):
                await asyncio.wait_for(fetch_bundle(stub, digest, tmp_path, CHUNK, 0.5), 30)
    finally:
        await server.stop(0)
    assert (tmp_path / f"{digest}.part").read_bytes() == BUNDLE[:CHUNK]

    healthy = _Controller(stall_after_first=False)
    server, port = await _serve(healthy)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            path = await asyncio.wait_for(fetch_bundle(stub, digest, tmp_path, CHUNK, 5), 30)
    finally:
        await server.stop(0)
    assert healthy.offsets == [CHUNK]  # resumed, not started over
    assert path.read_bytes() == BUNDLE
    assert not (tmp_path / f"{digest}.part").exists()
