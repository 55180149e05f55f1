"""gRPC's own CPU floor per streamed message, for the server-CPU table's comparison.

A Python grpc.aio FrameStream servicer that answers every frame with a small result and does
nothing else, in its own process; a client keeps 4 frames of a given size in flight. Whatever
the edge server spends per frame above this is its own work (decode, model, Python).

    .venv/bin/python -m bench.grpc_floor
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import psutil

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc

SIZES = (50_000, 150_528, 602_112)


class Answering(fs_grpc.FrameStreamServiceServicer):  # type: ignore[misc]
    async def Stream(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[fs.StreamRequest], context: object
    ) -> AsyncIterator[fs.StreamResponse]:
        async for request in request_iterator:
            if request.WhichOneof("kind") == "frame":
                yield fs.StreamResponse(
                    result=fs.FrameResult(
                        sequence=request.frame.sequence, model_name="floor",
                        labels=[fs.Label(class_id=281, label="tabby", score=0.5)],
                    )
                )  # fmt: skip


async def serve() -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    fs_grpc.add_FrameStreamServiceServicer_to_server(Answering(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def stream(port: int, count: int, size: int) -> None:
    payload = os.urandom(size)
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        room = asyncio.Semaphore(4)

        async def requests() -> AsyncIterator[fs.StreamRequest]:
            for sequence in range(count):
                await room.acquire()
                yield fs.StreamRequest(frame=fs.Frame(sequence=sequence, data=payload))

        async for _ in stub.Stream(requests()):
            room.release()


def transport_floor(count: int = 1000) -> list[tuple[int, float]]:
    """(message bytes, server CPU ms per message) for each size in SIZES."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_floor", "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        process = psutil.Process(server.pid)
        floor = []
        for size in SIZES:
            asyncio.run(stream(port, 100, size))  # warm-up
            before = sum(process.cpu_times()[:2])
            asyncio.run(stream(port, count, size))
            floor.append((size, (sum(process.cpu_times()[:2]) - before) * 1000 / count))
        return floor
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        asyncio.run(serve())
    else:
        for size, ms in transport_floor():
            print(f"{size} bytes: {ms:.3f} ms server CPU per message")
