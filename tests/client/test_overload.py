"""Overload: a camera sending flat out to a one-frame window. Every frame is accounted for,
and the client's drop count is the server's own."""

from __future__ import annotations

import asyncio
from pathlib import Path

from client.security import ChannelSecurity, open_channel
from client.sources import until_stopped
from client.sources.pattern import TestPatternSource
from client.stream import (
    FrameResult,
    FramesDropped,
    FrameStreamClient,
    OverloadPolicy,
    StreamConfig,
)
from testkit.edge import running_server
from testkit.repositories import ONNX_MODEL

FRAMES = 120


async def test_drop_accounting_under_overload_matches_the_server(repository: Path) -> None:
    async with (
        running_server(repository, stream_max_in_flight=1) as server,
        open_channel(f"127.0.0.1:{server.port}", ChannelSecurity()) as channel,
    ):
        config = StreamConfig(
            model_name=ONNX_MODEL,
            overload_policy=OverloadPolicy.DROP_OLDEST,
            max_in_flight=1,
            # Nothing held back on the client: the server's window decides what is dropped.
            send_queue_frames=FRAMES,
            client_window=FRAMES,
            flow_credits=False,  # a client that sends every frame (as before flow credits)
        )
        client = FrameStreamClient(channel, config)
        # Unpaced: the pattern comes much faster than one CPU model run per frame.
        frames = TestPatternSource(224, 224, count=FRAMES).frames()
        events = [event async for event in client.stream(frames)]
        telemetry = {entry.name: entry for entry in server.core.model_telemetry()}

    answered = {event.sequence for event in events if isinstance(event, FrameResult)}
    dropped = [
        seq for event in events if isinstance(event, FramesDropped) for seq in event.sequences
    ]
    stats = client.stats.snapshot()
    assert stats.frames_dropped_client == 0
    assert stats.frames_sent == FRAMES
    assert stats.frames_dropped > 0, "no overload happened; the test proves nothing"
    # Every frame sent is either answered or reported dropped, exactly once.
    assert len(dropped) == len(set(dropped)) == stats.frames_dropped
    assert answered.isdisjoint(dropped)
    assert answered | set(dropped) == set(range(1, FRAMES + 1))
    assert stats.frames_answered == len(answered)
    # The server's own per-model counter agrees with what it told the client.
    assert telemetry[ONNX_MODEL].drops == stats.frames_dropped


async def test_a_slow_consumer_sheds_frames_instead_of_buffering_them(repository: Path) -> None:
    """The caller reads events slowly: the client drops the oldest queued frames locally and
    keeps at most its window unsettled, instead of letting any queue grow."""
    stop = asyncio.Event()
    unsettled_seen: list[int] = []
    async with (
        running_server(repository, stream_max_in_flight=2) as server,
        open_channel(f"127.0.0.1:{server.port}", ChannelSecurity()) as channel,
    ):
        client = FrameStreamClient(
            channel, StreamConfig(ONNX_MODEL, send_queue_frames=4, flow_credits=False)
        )
        frames = until_stopped(TestPatternSource(224, 224).frames(), stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        async for _event in client.stream(frames):
            stats = client.stats
            unsettled_seen.append(
                stats.frames_sent - stats.frames_answered - stats.frames_dropped
                - stats.frames_rejected
            )  # fmt: skip
            if loop.time() < deadline:
                await asyncio.sleep(0.05)  # a consumer far slower than the source
            else:
                stop.set()
    final = client.stats.snapshot()
    assert final.frames_dropped_client > final.frames_sent, "the client should shed most frames"
    # Twice the server's window of 2.
    assert max(unsettled_seen) <= 4
    assert final.frames_sent == final.frames_answered + final.frames_dropped


async def test_stale_drops_reach_the_client_and_its_live_view(repository: Path) -> None:
    """max_age_ms=1 behind a one-frame window: every frame that waits for the model goes stale.
    The client counts those apart, and the live view shows them."""
    from client.display import live_table
    from client.runner import StreamRun
    from testkit.display import render

    async with (
        running_server(repository) as server,
        open_channel(f"127.0.0.1:{server.port}", ChannelSecurity()) as channel,
    ):
        config = StreamConfig(
            model_name=ONNX_MODEL, overload_policy=OverloadPolicy.DROP_OLDEST, max_in_flight=1,
            max_age_ms=1, send_queue_frames=FRAMES, client_window=FRAMES, flow_credits=False,
        )  # fmt: skip
        client = FrameStreamClient(channel, config)
        source = TestPatternSource(224, 224, count=FRAMES)
        events = [event async for event in client.stream(source.frames())]
    stale = [
        seq
        for event in events
        if isinstance(event, FramesDropped) and event.kind == "stale"
        for seq in event.sequences
    ]
    kinds = {event.kind for event in events if isinstance(event, FramesDropped)}
    answered = {event.sequence for event in events if isinstance(event, FrameResult)}
    stats = client.stats.snapshot()
    assert stale, "no frame went stale; the test proves nothing"
    assert kinds <= {"stale", "replaced"}
    assert answered.isdisjoint(stale)
    assert stats.frames_stale == len(stale)
    live = render(live_table([StreamRun(source, client.stats)]))
    assert "stale" in live and f" {len(stale)} " in live
