"""SIGTERM on a real `edgefleet serve` process drains in-flight work, then exits cleanly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from testkit.camera import camera
from testkit.edge import start_serve
from testkit.repositories import ONNX_MODEL

# edgefleet serve as a child process: a system test.
pytestmark = pytest.mark.system

FRAMES = 12


async def test_sigterm_answers_every_accepted_frame_then_exits_zero(
    repository: Path, tmp_path: Path
):
    process = await asyncio.to_thread(
        start_serve, tmp_path, "--repository", str(repository), "--port", "0",
        "--metrics-port", "-1", "--http-port", "-1", "--shutdown-grace-s", "20",
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            call = stub.Stream(
                camera(ONNX_MODEL, ["chelsea"], FRAMES, fps=40, policy=fs.OVERLOAD_POLICY_BLOCK)
            )
            answered = []
            async for response in call:
                if response.WhichOneof("kind") == "result":
                    answered.append(response.result.sequence)
                    if len(answered) == 2:
                        process.signal(signal.SIGTERM)  # mid-stream
            assert sorted(answered) == list(range(FRAMES))
        returncode = await asyncio.to_thread(process.wait, 60)
        output = process.log()
        assert returncode == 0, output[-2000:]
        assert "draining" in output and "edgefleet stopped" in output
    finally:
        process.kill()
