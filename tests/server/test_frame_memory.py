"""One memory budget for the frames of all streams (issue 23, item 4), on a real server.

What is measured is what the server itself holds for frames (`FrameMemory.peak_bytes`: bytes
as received plus decoded pixels, from acceptance to answer): gRPC receives each stream's next
message before our code runs and that is outside any budget of ours (server/frames/memory.py
says how much). Before the budget, one BLOCK stream with a window of 64 raw 4K frames took the
server's RSS from 139 to 2,241 MB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.app import EdgeServer
from server.frames.memory import HANDOVER_COPIES, MESSAGE_OVERHEAD_BYTES
from server.frames.session import READ_RESERVE_IDLE_S
from testkit.camera import collect
from testkit.edge import running_server
from testkit.repositories import ONNX_MODEL

MB = 2**20
WIDTH, HEIGHT = 1280, 720  # a raw frame: 2.6 MiB received, 5.3 MiB held with its pixels
FRAME = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), np.uint8).tobytes()
HELD = 2 * len(FRAME)


async def raw_stream(
    stub: fs_grpc.FrameStreamServiceStub,
    name: str,
    count: int,
    policy: fs.OverloadPolicy,
    *,
    max_in_flight: int = 64,
    frames: list[tuple[bytes, int, int]] | None = None,
) -> dict[str, list[Any]]:
    sent = frames or [(FRAME, WIDTH, HEIGHT)] * count

    async def requests() -> AsyncIterator[fs.StreamRequest]:
        yield fs.StreamRequest(
            open=fs.StreamOpen(
                model_name=ONNX_MODEL, encoding=fs.FRAME_ENCODING_RAW_RGB,
                overload_policy=policy, max_in_flight=max_in_flight, stream_id=name,
            )
        )  # fmt: skip
        for sequence, (data, width, height) in enumerate(sent):
            yield fs.StreamRequest(
                frame=fs.Frame(sequence=sequence, data=data, width=width, height=height)
            )

    return await collect(stub.Stream(requests()))


def sample(server: EdgeServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_block_streams_hold_no_more_than_the_budget_and_lose_nothing(repository):
    """16 BLOCK streams, each allowed 64 frames in flight (85 MiB of frames each), under a
    24 MiB budget: the frames and what gRPC may receive ahead for the streams reading (2.6 MiB
    each) never pass it, every frame is answered in order, and the memory is all given back."""
    budget = 24 * MB
    async with running_server(
        repository, frame_memory_budget_bytes=budget, max_message_bytes=4 * MB
    ) as server:
        memory = server.core.frame_memory
        assert memory.budget_bytes == budget
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            seen = await asyncio.gather(
                *(
                    raw_stream(stub, f"block{index}", 16, fs.OVERLOAD_POLICY_BLOCK)
                    for index in range(16)
                )
            )
        for stream in seen:
            assert not stream["error"] and not stream["dropped"]
            assert [result.sequence for result in stream["result"]] == list(range(16))
        assert HELD <= memory.peak_bytes <= budget, memory.peak_bytes
        assert memory.held_bytes == 0 and memory.read_ahead_bytes == 0
        assert memory.overcommits == 0
        assert sample(server, "edgefleet_frame_memory_bytes") == 0
        assert sample(server, "edgefleet_frame_memory_read_ahead_bytes") == 0
        assert sample(server, "edgefleet_frame_memory_overcommits_total") == 0
        assert sample(server, "edgefleet_frame_memory_budget_bytes") == budget


async def test_live_streams_drop_what_does_not_fit_with_the_reason(repository):
    """Live cameras sending as fast as they can with a budget of three frames (beside their
    read-ahead and the room for gRPC handing a message over): what does not fit is dropped
    as overloaded, saying why, counted; every frame is answered or dropped."""
    read_ahead = len(FRAME) + MESSAGE_OVERHEAD_BYTES
    budget = 3 * HELD + (6 + HANDOVER_COPIES) * read_ahead
    async with running_server(repository, frame_memory_budget_bytes=budget) as server:
        memory = server.core.frame_memory
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            seen = await asyncio.gather(
                *(
                    raw_stream(stub, f"live{index}", 30, fs.OVERLOAD_POLICY_DROP_OLDEST)
                    for index in range(6)
                )
            )
        over_budget = []
        for stream in seen:
            answered = {result.sequence for result in stream["result"]}
            dropped = {seq for notice in stream["dropped"] for seq in notice.sequences}
            assert not stream["error"]
            assert answered | dropped == set(range(30)) and not answered & dropped
            over_budget += [
                notice
                for notice in stream["dropped"]
                if notice.reason_code == fs.DROP_REASON_OVERLOADED
            ]
        assert over_budget, "six cameras fitted in a budget of three frames"
        assert all("frame memory budget full" in notice.reason for notice in over_budget)
        assert memory.peak_bytes <= budget
        assert memory.held_bytes == 0
        counted = sample(
            server, "edgefleet_frames_over_memory_budget_total", model=ONNX_MODEL,
            outcome="dropped",
        )  # fmt: skip
        assert counted == sum(len(notice.sequences) for notice in over_budget)


async def test_a_frame_larger_than_the_budget_is_refused_and_the_stream_goes_on(repository):
    budget = 8 * MB
    big = np.zeros((1080, 1920, 3), np.uint8).tobytes()  # 5.9 MiB, 11.9 MiB with its pixels
    async with running_server(repository, frame_memory_budget_bytes=budget) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            seen = await raw_stream(
                stub, "big", 3, fs.OVERLOAD_POLICY_BLOCK,
                frames=[(FRAME, WIDTH, HEIGHT), (big, 1920, 1080), (FRAME, WIDTH, HEIGHT)],
            )  # fmt: skip
        (error,) = seen["error"]
        assert error.sequence == 1
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "frame memory budget 8.0 MiB" in error.message
        assert sorted(result.sequence for result in seen["result"]) == [0, 2]
        refused = sample(
            server, "edgefleet_frames_over_memory_budget_total", model=ONNX_MODEL,
            outcome="refused",
        )  # fmt: skip
        assert refused == 1
        assert server.core.frame_memory.held_bytes == 0


async def test_an_idle_block_stream_gives_its_reserve_back(repository):
    """A BLOCK stream whose sender has nothing to send holds only its read-ahead (what gRPC may
    receive for it unasked: its last message's size) once READ_RESERVE_IDLE_S has passed: with
    a budget of one frame beside it, a live camera gets its frame answered, and the BLOCK
    stream's next frame, when it comes, is answered too. Before, the idle stream kept its last
    frame's size reserved for as long as it stayed open."""
    read_ahead = len(FRAME) + MESSAGE_OVERHEAD_BYTES
    # One frame, the idle and the live stream's read-ahead and the room kept for gRPC handing
    # a message over.
    budget = HELD + 2 * read_ahead + HANDOVER_COPIES * read_ahead + MB
    async with running_server(repository, frame_memory_budget_bytes=budget) as server:
        memory = server.core.frame_memory
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            send_next = asyncio.Event()

            async def requests() -> AsyncIterator[fs.StreamRequest]:
                yield fs.StreamRequest(
                    open=fs.StreamOpen(
                        model_name=ONNX_MODEL, encoding=fs.FRAME_ENCODING_RAW_RGB,
                        overload_policy=fs.OVERLOAD_POLICY_BLOCK, stream_id="idle",
                    )
                )  # fmt: skip
                for sequence in range(2):
                    await send_next.wait()
                    send_next.clear()
                    yield fs.StreamRequest(
                        frame=fs.Frame(sequence=sequence, data=FRAME, width=WIDTH, height=HEIGHT)
                    )

            block = stub.Stream(requests())
            responses = aiter(block)
            assert (await anext(responses)).WhichOneof("kind") == "opened"
            send_next.set()
            first = await anext(responses)
            assert first.WhichOneof("kind") == "result" and first.result.sequence == 0
            # The stream now waits for its sender; within a few idle periods it holds nothing.
            for _ in range(int(10 * READ_RESERVE_IDLE_S / 0.05)):
                if memory.held_bytes == read_ahead:
                    break
                await asyncio.sleep(0.05)
            assert memory.held_bytes == read_ahead, "an idle BLOCK stream still holds a reserve"
            assert memory.read_ahead_bytes == read_ahead
            assert sample(server, "edgefleet_frame_memory_read_ahead_bytes") == read_ahead

            # A frame the size of the rest of the budget fits only while the idle stream holds no
            # reserve.
            live = await raw_stream(stub, "live", 1, fs.OVERLOAD_POLICY_DROP_OLDEST)
            assert not live["dropped"] and len(live["result"]) == 1, live

            send_next.set()
            second = await anext(responses)
            assert second.WhichOneof("kind") == "result" and second.result.sequence == 1
            send_next.set()  # the sender ends: so does the stream
            assert [response async for response in responses] == []
        assert memory.held_bytes == 0


async def test_live_streams_hold_their_read_ahead_and_wait_for_room_to_start(repository):
    """gRPC receives a live stream's next message before the stream asks, too, so a live
    stream holds its read-ahead from its first frame until it ends and starts reading only
    once that fits: with room for two streams' read-ahead and one frame, four live cameras
    take turns (never more than two reading at once), and each frame is answered or dropped."""
    read_ahead = len(FRAME) + MESSAGE_OVERHEAD_BYTES
    budget = HELD + (2 + HANDOVER_COPIES) * read_ahead + MB
    async with running_server(repository, frame_memory_budget_bytes=budget) as server:
        memory = server.core.frame_memory
        most_read_ahead = 0

        async def watch() -> None:
            nonlocal most_read_ahead
            while True:
                most_read_ahead = max(most_read_ahead, memory.read_ahead_bytes)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            seen = await asyncio.gather(
                *(
                    raw_stream(stub, f"live{index}", 6, fs.OVERLOAD_POLICY_DROP_OLDEST)
                    for index in range(4)
                )
            )
        watcher.cancel()
        for stream in seen:
            answered = {result.sequence for result in stream["result"]}
            dropped = {seq for notice in stream["dropped"] for seq in notice.sequences}
            assert not stream["error"] and answered | dropped == set(range(6)), stream
        assert any(stream["result"] for stream in seen), "no live frame was answered"
        # Two streams' read-ahead at most (a first read expects an eighth of the budget).
        assert read_ahead <= most_read_ahead <= 2 * max(read_ahead, budget // 8), most_read_ahead
        assert memory.peak_bytes <= budget
        assert memory.held_bytes == memory.read_ahead_bytes == 0


async def test_streams_cancelled_mid_read_give_back_every_byte(repository):
    """Cameras that hang up at any point (waiting for room, mid-frame, with frames running)
    leave nothing held: no frame, reserve or read-ahead, nothing past the budget, and a camera
    that comes next is answered."""
    read_ahead = len(FRAME) + MESSAGE_OVERHEAD_BYTES
    budget = 2 * HELD + (4 + HANDOVER_COPIES) * read_ahead
    async with running_server(repository, frame_memory_budget_bytes=budget) as server:
        memory = server.core.frame_memory
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)

            async def hang_up_after(name: str, policy: fs.OverloadPolicy, answers: int) -> None:
                task = asyncio.ensure_future(raw_stream(stub, name, 40, policy))
                await asyncio.sleep(0.05 + 0.03 * answers)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

            await asyncio.gather(
                *(
                    hang_up_after(
                        f"cam{index}",
                        fs.OVERLOAD_POLICY_BLOCK if index % 3 else fs.OVERLOAD_POLICY_DROP_OLDEST,
                        index,
                    )
                    for index in range(12)
                )
            )
            for _ in range(200):  # the server sees each hang-up as its stream is cancelled
                if memory.held_bytes == 0:
                    break
                await asyncio.sleep(0.01)
            assert memory.held_bytes == 0 and memory.read_ahead_bytes == 0
            assert memory.overcommits == 0
            after = await raw_stream(stub, "after", 3, fs.OVERLOAD_POLICY_BLOCK)
            assert [result.sequence for result in after["result"]] == [0, 1, 2]
        assert memory.peak_bytes <= budget
