"""A client that asks for flow credits, against a server that predates them, sends as before.

The older server is a small FrameStream servicer written here, because this checkout's server
always knows the field: it answers `opened` without `flow_credits` (0, as an older server's
message decodes) and answers every frame, as a server fast enough never to drop would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from client.security import ChannelSecurity, open_channel
from client.sources import paced
from client.sources.pattern import TestPatternSource
from client.stream import Connected, FrameResult, FrameStreamClient, StreamConfig
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc

FRAMES = 30


class OlderServer(fs_grpc.FrameStreamServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.asked_for_credits: list[bool] = []
        self.frames = 0

    async def Stream(  # noqa: N802 - the gRPC method's name
        self,
        requests: AsyncIterator[fs.StreamRequest],
        context: grpc.aio.ServicerContext[fs.StreamRequest, fs.StreamResponse],
    ) -> AsyncIterator[fs.StreamResponse]:
        async for request in requests:
            if request.WhichOneof("kind") == "open":
                self.asked_for_credits.append(request.open.flow_credits)
                yield fs.StreamResponse(
                    opened=fs.StreamOpened(stream_id="old", model_name="m", max_in_flight=4)
                )
                continue
            self.frames += 1
            frame = request.frame
            yield fs.StreamResponse(
                result=fs.FrameResult(
                    sequence=frame.sequence, capture_time_unix_ns=frame.capture_time_unix_ns
                )
            )


async def test_an_older_server_gets_every_frame_as_before() -> None:
    servicer = OlderServer()
    server = grpc.aio.server()
    fs_grpc.add_FrameStreamServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with open_channel(f"127.0.0.1:{port}", ChannelSecurity()) as channel:
            client = FrameStreamClient(channel, StreamConfig("m", flow_credits=True))
            frames = paced(TestPatternSource(320, 240, count=FRAMES).frames(), 30)
            events = [event async for event in client.stream(frames)]
    finally:
        await server.stop(0)
    stats = client.stats.snapshot()
    assert servicer.asked_for_credits == [True]
    assert any(isinstance(event, Connected) for event in events)
    answered = [event for event in events if isinstance(event, FrameResult)]
    # Frames read before `opened` said "no credits" wait as one newest frame; from then on
    # every frame is encoded and sent, as before flow credits.
    assert stats.frames_skipped_source <= 3, stats
    assert stats.frames_sent == servicer.frames == len(answered) == stats.frames_answered
    assert stats.frames_sent + stats.frames_skipped_source + stats.frames_dropped_client == FRAMES
