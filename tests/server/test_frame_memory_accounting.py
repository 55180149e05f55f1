"""The frame memory budget's bookkeeping (server/frames/memory.py), driven directly: which
waiter goes first, what gRPC's read-ahead holds, and how it never stalls. The real server's
streams are in test_frame_memory.py and test_frame_memory_rss.py."""

from __future__ import annotations

import asyncio

from server.frames.memory import HANDOVER_COPIES, RECENT_FRAMES, FrameMemory

MB = 2**20


def budget_of(size: int) -> FrameMemory:
    """A budget with no room kept for gRPC's handing over (as after empty messages): that
    room has its own test, the last one."""
    memory = FrameMemory(size, 32 * MB)
    memory.received(0)
    return memory


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_read_ahead_stays_held_until_given_back_and_is_counted_apart():
    memory = budget_of(100 * MB)
    size, read_ahead = await memory.hold(30 * MB, 10 * MB)
    assert (size, read_ahead) == (30 * MB, 10 * MB)
    memory.release(20 * MB)  # the frame is answered; the read-ahead stays
    assert memory.held_bytes == memory.read_ahead_bytes == 10 * MB
    memory.resize_read_ahead(10 * MB, 4 * MB)  # the stream's last message was smaller
    assert memory.held_bytes == memory.read_ahead_bytes == 4 * MB
    memory.release(4 * MB, 4 * MB)  # the stream ended
    assert memory.held_bytes == memory.read_ahead_bytes == 0


async def test_a_waiter_that_fits_only_when_a_stream_ends_does_not_hold_up_the_rest():
    """With 70 MiB of read-ahead held, a new stream's 40 MiB first read can never fit until a
    stream ends; a 20 MiB frame behind it fits once the running frame is answered and goes
    first. A live frame is not refused for the one that cannot fit, and the new stream waits
    for a stream to end even when nothing else is held."""
    memory = budget_of(100 * MB)
    await memory.hold(70 * MB, 70 * MB)  # streams' read-ahead
    await memory.hold(25 * MB)  # a running frame
    memory.read(30 * MB, 10 * MB)  # the frames read: a first read needs 40 MiB
    never = asyncio.create_task(memory.hold_first_read())
    soon = asyncio.create_task(memory.hold(20 * MB))
    await settle()
    assert not never.done() and not soon.done()
    memory.release(25 * MB)
    await settle()
    assert soon.done() and not never.done()
    assert memory.held_bytes == 90 * MB
    assert memory.try_hold(10 * MB), "a live frame that fits waited for one that cannot"
    memory.release(30 * MB)
    await settle()
    assert not never.done(), "a new stream passed the budget while the others stay open"
    memory.release(40 * MB, 40 * MB)  # streams end: now it fits
    await settle()
    assert never.result() == (30 * MB, 10 * MB)
    assert memory.held_bytes == 70 * MB and memory.read_ahead_bytes == 40 * MB
    assert memory.overcommits == 0


async def test_a_waiter_in_turn_holds_up_live_frames_and_later_waiters():
    memory = budget_of(100 * MB)
    await memory.hold(80 * MB)
    first = asyncio.create_task(memory.hold(50 * MB))
    await settle()
    later = asyncio.create_task(memory.hold(10 * MB))
    await settle()
    assert not later.done(), "a later waiter passed the one in turn"
    assert not memory.try_hold(10 * MB), "a live frame passed a BLOCK frame in turn"
    memory.release(80 * MB)
    await settle()
    assert first.done() and later.done() and memory.held_bytes == 60 * MB


async def test_when_nothing_will_be_given_back_the_frame_waiting_for_its_rest_goes_first():
    """All that is held is read-ahead and a partly reserved frame waiting for its rest, and
    nothing can fit within the budget: without a way out every BLOCK stream stalls for good.
    The waiting frame passes the budget (it runs and gives back), then an open stream's next
    read; a new stream's first read (which would only add read-ahead) waits for a stream to
    end. Each overcommit is counted."""
    counted = []
    memory = FrameMemory(100 * MB, 32 * MB, on_overcommit=lambda: counted.append(1))
    memory.received(0)
    await memory.hold(60 * MB, 60 * MB)  # the open streams' read-ahead
    memory.read(40 * MB, 10 * MB)  # the frames read: a first read needs 50 MiB
    first_read = asyncio.create_task(memory.hold(50 * MB, 10 * MB, first_read=True))
    await memory.hold(30 * MB)  # a stream's reserve for its next frame...
    rest = asyncio.create_task(memory.hold(20 * MB, holding=30 * MB))  # ...too small by 20
    await settle()
    assert rest.done() and not first_read.done()
    assert memory.held_bytes == 110 * MB and memory.overcommits == 1 and counted == [1]
    memory.release(50 * MB)  # that frame is answered: held is read-ahead only again
    await settle()
    assert not first_read.done(), "a new stream passed the budget while the others stay open"
    next_read = asyncio.create_task(memory.hold(45 * MB))  # an open stream's, never fits
    await settle()
    assert next_read.done(), "an open stream stalled with nothing but read-ahead held"
    assert memory.overcommits == 2
    memory.release(45 * MB)
    memory.release(60 * MB, 60 * MB)  # the streams end
    await settle()
    assert first_read.done() and memory.held_bytes == 50 * MB


async def test_a_first_read_is_sized_as_the_frames_read_when_its_turn_comes():
    """Before any frame, a first read holds a quarter of the budget (the frame) and an eighth
    (its read-ahead); once its turn comes after other streams' reads, it holds their sizes."""
    memory = budget_of(64 * MB)
    assert memory.first_read() == (16 * MB, 8 * MB)
    await memory.hold(60 * MB)
    waiting = asyncio.create_task(memory.hold_first_read())
    await settle()
    memory.read(5 * MB, 2 * MB)
    memory.release(60 * MB)
    await settle()
    assert waiting.result() == (5 * MB, 2 * MB)
    assert memory.held_bytes == 7 * MB and memory.read_ahead_bytes == 2 * MB


async def test_a_cancelled_waiter_leaves_nothing_held_and_lets_the_next_one_in():
    memory = budget_of(100 * MB)
    await memory.hold(70 * MB)
    cancelled = asyncio.create_task(memory.hold(50 * MB, 10 * MB))
    behind = asyncio.create_task(memory.hold(30 * MB))
    await settle()
    assert not behind.done()
    cancelled.cancel()
    await settle()
    assert behind.done() and memory.held_bytes == 100 * MB and memory.read_ahead_bytes == 0


async def test_room_is_kept_for_grpc_handing_over_the_largest_recent_message():
    """gRPC holds several copies of a message while it hands it over (server/frames/memory.py),
    so the budget keeps room for those of the largest of the last messages: after a 10 MiB
    message, 40 MiB of a 100 MiB budget; a frame past the rest waits until the large message
    is no longer among the last 16."""
    memory = FrameMemory(100 * MB, 32 * MB)
    assert memory.room_bytes == 100 * MB - HANDOVER_COPIES * 100 * MB // 8  # a first read's
    memory.received(10 * MB)
    assert memory.room_bytes == 100 * MB - HANDOVER_COPIES * 10 * MB
    assert not memory.try_hold(memory.room_bytes + 1)
    await memory.hold(30 * MB)  # a running frame
    waiting = asyncio.create_task(memory.hold(50 * MB))
    await settle()
    assert not waiting.done()
    for _ in range(RECENT_FRAMES):
        memory.received(1 * MB)
    await settle()
    assert waiting.done() and memory.room_bytes == 100 * MB - HANDOVER_COPIES * MB
    assert memory.held_bytes == 80 * MB and memory.overcommits == 0
