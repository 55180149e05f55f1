"""SIGTERM on a real `edgefleet serve` process drains in-flight work, then exits cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from tests.conftest import ONNX_MODEL, ROOT
from tests.server.camera import camera

FRAMES = 12


async def test_sigterm_answers_every_accepted_frame_then_exits_zero(
    repository: Path, tmp_path: Path
):
    port_file = tmp_path / "port"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli", "serve", "--repository", str(repository),
        "--port", "0", "--metrics-port", "-1", "--http-port", "-1", "--port-file", str(port_file),
        "--shutdown-grace-s", "20",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(600):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        port = int(port_file.read_text())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            call = stub.Stream(
                camera(ONNX_MODEL, ["chelsea"], FRAMES, fps=40, policy=fs.OVERLOAD_POLICY_BLOCK)
            )
            answered = []
            async for response in call:
                if response.WhichOneof("kind") == "result":
                    answered.append(response.result.sequence)
                    if len(answered) == 2:
                        process.send_signal(signal.SIGTERM)  # mid-stream
            assert sorted(answered) == list(range(FRAMES))
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, output.decode()[-2000:]
        assert b"draining" in output and b"edgefleet stopped" in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
