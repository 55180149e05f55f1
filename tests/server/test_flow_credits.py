"""Flow credits on FrameStream: a live camera sends a frame only when the server can take one.

The real server and the real `faces` pipeline (MTCNN, far slower than a 30 fps camera on this
machine), the real camera client library over a real channel. An old client (no credits), a
BLOCK stream and a client that floods in spite of its credits keep today's policies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.security import ChannelSecurity, open_channel
from client.sources import paced, until_stopped
from client.sources.pattern import TestPatternSource
from client.stream import (
    Connected,
    FrameResult,
    FrameStreamClient,
    OverloadPolicy,
    StreamConfig,
    StreamEvent,
)
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.app import EdgeServer
from testkit.camera import camera, collect, encode
from testkit.edge import running_server
from testkit.faces import copy_faces
from testkit.media import photo

# A slow pipeline under a paced camera for seconds: system tests.
pytestmark = pytest.mark.system

MODEL = "faces"
FPS = 30.0
RUN_S = 4.0


@pytest.fixture
async def faces_server(tmp_path: Path, built_models: Path) -> AsyncIterator[EdgeServer]:
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    async with running_server(repo) as server:
        yield server


async def stream_camera(
    server: EdgeServer, config: StreamConfig
) -> tuple[FrameStreamClient, list[StreamEvent]]:
    """A 30 fps live camera (1280x720) streamed for RUN_S seconds with the client library."""
    stop = asyncio.Event()
    async with open_channel(f"127.0.0.1:{server.port}", ChannelSecurity()) as channel:
        client = FrameStreamClient(channel, config)
        frames = until_stopped(paced(TestPatternSource(1280, 720, fps=FPS).frames(), FPS), stop)
        asyncio.get_running_loop().call_later(RUN_S, stop.set)
        events = [event async for event in client.stream(frames)]
    return client, events


def drops(server: EdgeServer) -> int:
    return next(entry.drops for entry in server.core.model_telemetry() if entry.name == MODEL)


async def test_a_credited_camera_sends_only_frames_that_run(faces_server: EdgeServer) -> None:
    client, events = await stream_camera(
        faces_server, StreamConfig(MODEL, max_in_flight=2, flow_credits=True)
    )
    stats = client.stats.snapshot()
    (connected,) = [event for event in events if isinstance(event, Connected)]
    results = [event for event in events if isinstance(event, FrameResult)]
    assert results, "nothing was answered"
    assert stats.frames_skipped_source > 0, "the model kept up; the test proves nothing"
    # Nothing the server would replace was sent: every frame sent was answered, but the last
    # window's, which the stream's end may leave unanswered.
    assert stats.frames_sent <= stats.frames_answered + connected.max_in_flight
    assert stats.frames_dropped == 0 and stats.frames_dropped_client == 0
    assert drops(faces_server) == 0, "the server replaced or dropped credited frames"
    # Fresh: send to answer within a few of the server's own times per frame and two frame
    # intervals: a credited frame does not wait behind others at the server.
    latency = np.array([r.latency_s for r in results if r.latency_s is not None])
    server_s = np.array([r.server_total_us / 1e6 for r in results])
    assert np.median(latency) <= 3 * np.median(server_s) + 2 / FPS, (latency, server_s)


async def test_an_old_client_still_gets_drop_oldest(faces_server: EdgeServer) -> None:
    """A client that does not ask for credits: StreamOpened says none, frames are replaced."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{faces_server.port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        seen = await collect(stub.Stream(camera(MODEL, ["astronaut"], 90, fps=FPS)))
    (opened,) = seen["opened"]
    assert opened.flow_credits == 0
    assert not seen["credits"]
    replaced = [
        sequence
        for notice in seen["dropped"]
        if notice.reason_code == fs.DROP_REASON_REPLACED
        for sequence in notice.sequences
    ]
    assert replaced, "the old client's frames were never replaced; the model kept up"
    assert len(seen["result"]) + len(replaced) == 90


async def test_a_block_stream_gets_no_credits(faces_server: EdgeServer) -> None:
    """Recorded video keeps gRPC flow control: asking for credits on BLOCK turns nothing on."""
    async with open_channel(f"127.0.0.1:{faces_server.port}", ChannelSecurity()) as channel:
        client = FrameStreamClient(
            channel, StreamConfig(MODEL, overload_policy=OverloadPolicy.BLOCK, flow_credits=True)
        )
        source = TestPatternSource(320, 240, count=6)
        events = [event async for event in client.stream(source.frames())]
    stats = client.stats.snapshot()
    assert stats.frames_answered == stats.frames_sent == 6
    assert stats.frames_skipped_source == 0
    assert any(isinstance(event, Connected) for event in events)


async def flooding_camera(count: int) -> AsyncIterator[fs.StreamRequest]:
    """Asks for credits, then ignores them and sends `count` frames flat out."""
    data, width, height = encode(photo("astronaut"), fs.FRAME_ENCODING_JPEG)
    yield fs.StreamRequest(
        open=fs.StreamOpen(
            model_name=MODEL, encoding=fs.FRAME_ENCODING_JPEG, flow_credits=True,
            overload_policy=fs.OVERLOAD_POLICY_DROP_OLDEST,
        )
    )  # fmt: skip
    for sequence in range(count):
        yield fs.StreamRequest(
            frame=fs.Frame(sequence=sequence, capture_time_unix_ns=time.time_ns(), data=data)
        )
        await asyncio.sleep(0)


async def test_a_client_that_floods_past_its_credits_meets_drop_oldest(
    faces_server: EdgeServer,
) -> None:
    frames = 300
    async with grpc.aio.insecure_channel(f"127.0.0.1:{faces_server.port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        seen = await collect(stub.Stream(flooding_camera(frames)))
    (opened,) = seen["opened"]
    assert opened.flow_credits == 1
    replaced = [
        sequence
        for notice in seen["dropped"]
        if notice.reason_code == fs.DROP_REASON_REPLACED
        for sequence in notice.sequences
    ]
    answered = [result.sequence for result in seen["result"]]
    # The existing policy bounds it: one waiting frame, the rest replaced; every frame accounted.
    assert len(replaced) > frames // 2
    assert sorted(answered + replaced) == list(range(frames))
    # A client in debt is granted nothing more while it floods: credits stay bounded.
    granted = sum(credit.frames for credit in seen["credits"])
    assert granted <= len(answered) + 1


async def credited_camera(
    stub: fs_grpc.FrameStreamServiceStub, data: bytes, stop: asyncio.Event
) -> dict[str, list[int]]:
    """A camera that keeps to its credits: its frame for the credit it holds at open at once,
    then one frame per credit granted, until `stop`; then it ends and reads what is left."""
    call = stub.Stream()
    await call.write(
        fs.StreamRequest(
            open=fs.StreamOpen(
                model_name=MODEL, encoding=fs.FRAME_ENCODING_JPEG, flow_credits=True,
                overload_policy=fs.OVERLOAD_POLICY_DROP_OLDEST,
            )
        )
    )  # fmt: skip
    seen: dict[str, list[int]] = {"sent": [], "answered": [], "replaced": [], "other": []}

    async def send() -> None:
        sequence = len(seen["sent"])
        frame = fs.Frame(sequence=sequence, capture_time_unix_ns=time.time_ns(), data=data)
        await call.write(fs.StreamRequest(frame=frame))
        seen["sent"].append(sequence)

    ended = False
    while (response := await call.read()) is not grpc.aio.EOF:
        kind = response.WhichOneof("kind")
        if kind == "opened" or (kind == "credits" and not stop.is_set()):
            await send()
        elif kind == "result":
            seen["answered"].append(response.result.sequence)
        elif kind == "dropped":
            replaced = response.dropped.reason_code == fs.DROP_REASON_REPLACED
            seen["replaced" if replaced else "other"].extend(response.dropped.sequences)
        if stop.is_set() and not ended:
            ended = True
            await call.done_writing()
    return seen


async def test_a_credited_frame_passed_over_is_replaced_by_a_fresh_one(
    faces_server: EdgeServer,
) -> None:
    """Eight cameras open at once, each spending the credit it holds at open: eight frames wait
    for a model that runs one or two at a time. A credited frame is never replaced by the
    camera on its own, so a frame that waited out other streams' turns would run seconds old;
    instead, when its stream's turn comes, the stream is granted a fresh credit and the newer
    frame replaces it."""
    data, _, _ = encode(photo("astronaut"), fs.FRAME_ENCODING_JPEG)
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{faces_server.port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        asyncio.get_running_loop().call_later(RUN_S, stop.set)
        streams = await asyncio.gather(*(credited_camera(stub, data, stop) for _ in range(8)))
    replaced_first = [seen for seen in streams if 0 in seen["replaced"]]
    assert replaced_first, "no passed-over frame was refreshed; they all ran as old as they were"
    for seen in streams:
        assert seen["answered"], "a stream starved"
        assert not seen["other"], seen
        # Every frame sent on a credit is accounted for, and replaced only by a newer one.
        settled = sorted(seen["answered"] + seen["replaced"])
        assert settled == seen["sent"][: len(settled)]
        assert max(seen["replaced"], default=-1) < max(seen["answered"])
