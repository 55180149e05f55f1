"""A server killed and restarted mid-stream: the client reconnects and resumes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.security import ChannelSecurity, open_channel
from client.sources import paced
from client.sources.pattern import TestPatternSource
from client.stats import StreamState
from client.stream import (
    BackoffPolicy,
    Connected,
    FrameResult,
    FrameStreamClient,
    OverloadPolicy,
    Reconnecting,
    StreamConfig,
    StreamEvent,
    StreamFailed,
)
from server.app import EdgeServer
from testkit.edge import server_settings
from testkit.repositories import ONNX_MODEL

FRAMES = 60
OUTAGE_S = 1.0


# A server restarted mid-stream: seconds.
@pytest.mark.system
@pytest.mark.parametrize("policy", [OverloadPolicy.BLOCK, OverloadPolicy.DROP_OLDEST])
async def test_server_restart_mid_stream_reconnects_and_resumes(
    repository: Path, policy: OverloadPolicy
) -> None:
    servers = [EdgeServer(server_settings(repository))]
    port = await servers[0].start()

    async def restart_after_outage() -> None:
        await servers[0].stop(grace_s=0)
        await asyncio.sleep(OUTAGE_S)
        # The same port: a restarted server comes back where its cameras know to find it.
        servers.append(EdgeServer(server_settings(repository, port=port)))
        await servers[-1].start()

    config = StreamConfig(
        model_name=ONNX_MODEL,
        overload_policy=policy,
        backoff=BackoffPolicy(initial_s=0.05, max_s=0.3, max_attempts=0),
    )
    events: list[StreamEvent] = []
    restart: asyncio.Task[None] | None = None
    states_during_outage: set[StreamState] = set()
    try:
        async with open_channel(f"127.0.0.1:{port}", ChannelSecurity()) as channel:
            client = FrameStreamClient(channel, config)
            frames = paced(TestPatternSource(160, 120, fps=30, count=FRAMES).frames(), 30)
            async for event in client.stream(frames):
                events.append(event)
                if restart is None and isinstance(event, FrameResult) and event.sequence >= 10:
                    restart = asyncio.create_task(restart_after_outage())
                if isinstance(event, Reconnecting):
                    states_during_outage.add(client.stats.state)
        assert restart is not None
        await restart
    finally:
        if restart is not None and not restart.done():
            restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await restart
        for server in servers:
            await server.stop(grace_s=0)

    reconnects = [event for event in events if isinstance(event, Reconnecting)]
    assert reconnects, "the restart was never noticed"
    assert states_during_outage == {StreamState.RECONNECTING}
    connects = [index for index, event in enumerate(events) if isinstance(event, Connected)]
    assert len(connects) == 2, "expected one reconnect after the outage"
    after_restart = [event for event in events[connects[1] :] if isinstance(event, FrameResult)]
    assert after_restart, "nothing was answered after the restart"
    answered = [event.sequence for event in events if isinstance(event, FrameResult)]
    snapshot = client.stats.snapshot()
    assert snapshot.state is StreamState.FINISHED
    assert snapshot.reconnects == len(reconnects)
    if policy is OverloadPolicy.BLOCK:
        # Recorded video: unanswered frames are re-sent, so every frame is answered once.
        assert sorted(answered) == list(range(1, FRAMES + 1))
        assert snapshot.frames_answered == FRAMES and snapshot.frames_lost == 0
    else:
        # Live camera: frames queued during the outage are shed and the ones the dead
        # connection held are written off, but every frame is accounted for exactly once.
        assert len(answered) == len(set(answered)) == snapshot.frames_answered
        # (Frames read while no flow credit was held are skipped before encoding.)
        skipped = snapshot.frames_dropped_client + snapshot.frames_skipped_source
        assert snapshot.frames_sent + skipped == FRAMES
        assert snapshot.frames_sent == (
            snapshot.frames_answered + snapshot.frames_dropped + snapshot.frames_lost
            + snapshot.frames_rejected
        )  # fmt: skip
        assert skipped > 0, "the outage should have shed frames"


async def test_a_server_that_never_opens_the_stream_is_not_a_silent_stall() -> None:
    """A server that accepts the call and then says nothing (hung, wedged) is treated as down:
    the client retries, then fails with a message, instead of waiting forever."""
    import grpc

    from protos.edgefleet.v1 import frame_stream_pb2_grpc as pb_grpc
    from testkit.media import photo_frames

    class SilentServicer(pb_grpc.FrameStreamServiceServicer):  # type: ignore[misc]
        async def Stream(self, request_iterator, context):
            await asyncio.Event().wait()
            yield  # never reached

    server = grpc.aio.server()
    pb_grpc.add_FrameStreamServiceServicer_to_server(SilentServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with open_channel(f"127.0.0.1:{port}", ChannelSecurity()) as channel:
            config = StreamConfig(
                ONNX_MODEL,
                open_timeout_s=0.3,
                backoff=BackoffPolicy(initial_s=0.01, max_attempts=2),
            )
            client = FrameStreamClient(channel, config)
            with pytest.raises(StreamFailed, match="gave up after 2 attempts: no 'opened'"):
                await asyncio.wait_for(_drain(client.stream(photo_frames("chelsea"))), 10)
    finally:
        await server.stop(grace=None)
    assert client.stats.snapshot().state is StreamState.FAILED


async def _drain(events: AsyncIterator[StreamEvent]) -> None:
    async for _event in events:
        pass
