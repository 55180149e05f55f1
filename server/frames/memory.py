"""One byte budget for the camera frames every stream holds: waiting, running and decoded.

Each stream's window bounds its own frames, but not all streams together: one BLOCK stream
with a window of 64 raw 4K frames took RSS from 139 to 2,241 MB, and 1,024 streams may be open.
A frame holds its bytes as received plus its decoded pixels (`frame_bytes`) from the moment it
is accepted until its result, drop or failure, so what all streams hold never exceeds the
budget:
- a BLOCK stream holds a reserve (its last frame's size; before its first, that of the
  largest frame BLOCK streams read last, `FrameMemory.first_read`) before it asks gRPC for
  its next message (gRPC receives a message whole once asked), so when the budget is full it
  stops reading and gRPC flow control holds its sender back; a frame needing more than the
  reserve keeps it and waits for the rest; a stream whose sender sends nothing for a second
  gives the reserve back (its next frame waits for its whole size once received);
- every stream also holds its read-ahead from its first frame until it ends: once a stream
  has taken a message, gRPC receives as many bytes of its next messages before it asks (its
  flow control window), whether or not the budget has room (`read_ahead_bytes_of`). Without
  it 64 BLOCK streams of raw 4K frames took 1.5 GB past the budget, one message each. So at
  most budget / (frame + read-ahead) streams read at once; the others wait before their
  first frame, when gRPC holds nothing for them (a live stream holds no reserve, but starts
  only where a frame would fit beside the streams' read-ahead);
- a live stream keeps reading and drops a frame that does not fit (`overloaded`, "frame
  memory budget full");
- a frame needing more than the whole budget is refused (RESOURCE_EXHAUSTED), never waited for;
- room is kept for gRPC handing the next message over (`HANDOVER_COPIES` of the largest of
  the last messages): while it does, it holds a contiguous copy of the message's slices, the
  Python bytes and protobuf's copy, and the stream's next read-ahead arrives (a lone 23.7 MiB
  message peaked at +121 to +144 MB with a handler that keeps nothing).

64 BLOCK streams of raw 4K frames under a 256 MiB (268 MB) budget: +236 to +267 MB RSS over
ready, the same for 16 streams, +282 for 128 (tests/server/test_frame_memory_rss.py). The
default budget is a share of the device's memory (`default_budget`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from server.frames.types import EncodedFrame
from server.vision.preprocess import FrameEncoding

# Share of the device's usable memory the frames may hold by default, and its floor.
DEFAULT_SHARE = 0.25
MIN_BUDGET_BYTES = 64 * 2**20
MB = 2**20


def default_budget(usable_bytes: int | None) -> int:
    """A quarter of the memory the hardware probe finds usable (available memory within the
    cgroup's headroom), at least 64 MiB; 1 GiB when it finds nothing."""
    if usable_bytes is None:
        return 2**30
    return max(MIN_BUDGET_BYTES, int(usable_bytes * DEFAULT_SHARE))


def frame_bytes(frame: EncodedFrame, encoding: FrameEncoding, max_pixels: int) -> int:
    """What a frame holds at most: its bytes and its decoded pixels (3 bytes each). A JPEG or
    PNG whose header cannot be read, or that declares more than `max_pixels` (an image bomb),
    counts its bytes only: the decoder refuses it (INVALID_ARGUMENT) before it holds any
    pixels, so the budget must not refuse it first with another status."""
    data = frame.data
    if encoding in (FrameEncoding.RAW_RGB, FrameEncoding.RAW_BGR):
        return 2 * len(data)
    if encoding is FrameEncoding.PNG:
        if len(data) < 24:
            return len(data)
        width = int.from_bytes(data[16:20], "big")
        height = int.from_bytes(data[20:24], "big")
        size: tuple[int, int] | None = (height, width)
    else:
        size = _jpeg_size(data)
    if size is None or size[0] * size[1] > max_pixels:
        return len(data)
    return len(data) + 3 * size[0] * size[1]


# A frame message's bytes besides the frame's data: its other fields and gRPC's framing.
MESSAGE_OVERHEAD_BYTES = 4096


def read_ahead_bytes_of(frame: EncodedFrame) -> int:
    """What gRPC may receive for a stream before it asks again, once it has taken this frame:
    as many bytes as this frame's message (its flow control window grows to the last message
    taken; measured with grpcio 1.81: 24 MB after a 24 MB message, 12 MB after a 12 MB one, next to
    nothing after a 1 KB one)."""
    return len(frame.data) + MESSAGE_OVERHEAD_BYTES


def largest_frame_bytes(max_message_bytes: int) -> int:
    """What the frame of the largest message may hold: a raw frame's bytes and pixels (a JPEG
    or PNG decoding to more waits for its whole size once received)."""
    return 2 * max_message_bytes


# JPEG start-of-frame markers (baseline, progressive, ...; not DHT C4, JPG C8, DAC CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the start-of-frame segment, by walking the markers: this runs on
    the event loop for every frame, and opening the header with Pillow cost live cameras'
    fairness (8 cameras at 30 fps). None when unreadable."""
    index = 2
    while index + 9 <= len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker in _SOF:
            height = int.from_bytes(data[index + 5 : index + 7], "big")
            width = int.from_bytes(data[index + 7 : index + 9], "big")
            return height, width
        index += 2 + int.from_bytes(data[index + 2 : index + 4], "big")
    return None


# A BLOCK stream's first frame is expected to be as large as the largest of this many frames
# the BLOCK streams read last (a fleet's cameras are alike); gRPC's handing over of the next
# message, as large as the largest of as many messages any stream read last.
RECENT_FRAMES = 16
# What gRPC's handing over of a message holds at once, in messages, besides the read-ahead it
# was and the frame's bytes it becomes: a contiguous copy of its slices, the Python bytes,
# protobuf's copy, and the stream's next read-ahead, arriving meanwhile (with 3, 64 streams of
# 4K frames peaked 16 to 48 MB past a 268 MB budget; with 4, 32 MB under to 14 MB past).
HANDOVER_COPIES = 4


@dataclass
class _Waiter:
    size: int
    read_ahead: int  # of `size`: the change in the waiting stream's read-ahead
    holding: int  # what the waiting stream holds and gives back only once granted
    granted: asyncio.Future[None]
    first_read: bool = False  # sized when its turn comes, as the frames read by then
    with_frame: bool = True  # a first read holds its frame's reserve too (BLOCK streams)
    # Must fit some day beside it but is not held: a live stream's first frame, so the live
    # streams reading never leave no room for a frame.
    headroom: int = 0


class FrameMemory:
    """The bytes held by the frames of all streams, against one budget. Event loop only.

    Part of what is held is read-ahead (`read_ahead_bytes`): what gRPC may receive for the
    BLOCK streams before they ask (`read_ahead_bytes_of`), held from a stream's first read
    until it ends. Only a stream's end gives it back, so a waiter that could fit only once
    some read-ahead is given back does not hold up the waiters behind it; and when nothing
    but read-ahead and waiters' holdings is held, so nothing will be given back, the waiter
    in turn (or the oldest) passes the budget (`overcommits`) rather than stall every BLOCK
    stream: frames larger than their stream's first, or a budget too small for a frame
    beside the open streams' read-ahead."""

    def __init__(
        self,
        budget_bytes: int,
        max_message_bytes: int,
        on_overcommit: Callable[[], None] | None = None,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.peak_bytes = 0
        self.overcommits = 0  # times what is held went past the budget
        self._max_message_bytes = max_message_bytes
        self._on_overcommit = on_overcommit
        self._held = 0
        self._read_ahead = 0
        self._waiters: deque[_Waiter] = deque()
        self._recent: deque[tuple[int, int]] = deque(maxlen=RECENT_FRAMES)
        self._recent_messages: deque[int] = deque(maxlen=RECENT_FRAMES)
        # Before any message, room for one as large as a first read expects (`first_read`).
        self._handover = HANDOVER_COPIES * self.first_read()[1]

    @property
    def held_bytes(self) -> int:
        return self._held

    @property
    def read_ahead_bytes(self) -> int:
        return self._read_ahead

    def too_large(self, size: int) -> bool:
        """A frame that could never fit, even alone."""
        return size > self.budget_bytes

    def describe(self, size: int) -> str:
        return (
            f"frame needs {size / MB:.1f} MiB (bytes and decoded pixels); frame memory "
            f"budget {self.budget_bytes / MB:.1f} MiB, {self._held / MB:.1f} MiB held"
        )

    def first_read(self) -> tuple[int, int]:
        """(reserve, read-ahead) a BLOCK stream holds before its first frame, whose size it
        does not know: those of the largest of the frames BLOCK streams read last; before any,
        what the largest message's frame and read-ahead may hold, cut to a quarter and an
        eighth of the budget (in full, one open stream kept every other from starting under a
        64 MiB budget). A first frame larger than that waits for the rest of its size."""
        if self._recent:
            return max(frame for frame, _ in self._recent), max(ahead for _, ahead in self._recent)
        return (
            min(largest_frame_bytes(self._max_message_bytes), self.budget_bytes // 4),
            min(self._max_message_bytes + MESSAGE_OVERHEAD_BYTES, self.budget_bytes // 8),
        )

    async def hold_first_read(self, with_frame: bool = True) -> tuple[int, int]:
        """Hold what a stream's first frame (a BLOCK stream's; a live stream holds its frame
        once read) and its read-ahead are expected to need (`first_read`, as estimated when
        granted); returns (reserve, read-ahead) held."""
        reserve, read_ahead = self.first_read()
        reserve = reserve if with_frame else 0
        size, read_ahead = await self.hold(
            reserve + read_ahead, read_ahead, first_read=True, with_frame=with_frame
        )
        return size - read_ahead, read_ahead

    def read(self, frame_size: int, read_ahead: int) -> None:
        """A stream read a frame of `frame_size` that left `read_ahead` with gRPC."""
        self._recent.append((frame_size, read_ahead))

    def received(self, message_bytes: int) -> None:
        """A stream received a message of `message_bytes`: the next message gRPC hands over is
        expected as large as the largest of the last ones, and room is kept for its copies."""
        self._recent_messages.append(message_bytes)
        handover = HANDOVER_COPIES * max(self._recent_messages)
        if handover != self._handover:
            shrinks = handover < self._handover
            self._handover = handover
            if shrinks:
                self._grant()

    @property
    def room_bytes(self) -> int:
        """The budget less the room kept for gRPC handing over the next message."""
        return self.budget_bytes - self._handover

    def try_hold(self, size: int) -> bool:
        """Hold `size` bytes now if they fit (live streams); False: drop the frame."""
        if self._someone_waits_in_turn() or self._held + size > self.room_bytes:
            return False
        self._take(size, 0)
        return True

    async def hold(
        self,
        size: int,
        read_ahead: int = 0,
        holding: int = 0,
        *,
        first_read: bool = False,
        with_frame: bool = True,
    ) -> tuple[int, int]:
        """Hold `size` bytes, waiting in turn until they fit (BLOCK). `read_ahead` of them
        (negative: given back) change the caller's read-ahead; `holding` is what the caller
        holds besides and gives back only once granted. Returns (size, read-ahead) held: a
        first read's are sized when its turn comes."""
        headroom = self.first_read()[0] if first_read and not with_frame else 0
        if (
            not self._someone_waits_in_turn()
            and self._read_ahead + holding + size + headroom <= self.room_bytes
            and self._held + size <= self.room_bytes
        ):  # the fast path of every BLOCK read: no future, no waiter
            self._take(size, read_ahead)
            return size, read_ahead
        granted = asyncio.get_running_loop().create_future()
        waiter = _Waiter(size, read_ahead, holding, granted, first_read, with_frame, headroom)
        self._waiters.append(waiter)
        self._grant()  # with nothing else held, it may pass at once (see the class)
        try:
            await waiter.granted
        except BaseException:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self.release(waiter.size, waiter.read_ahead)  # granted as it was cancelled
            else:
                self._waiters.remove(waiter)
                self._grant()
            raise
        return waiter.size, waiter.read_ahead

    def release(self, size: int, read_ahead: int = 0) -> None:
        self._held = max(0, self._held - size)
        self._read_ahead = max(0, self._read_ahead - read_ahead)
        self._grant()

    def resize_read_ahead(self, old: int, new: int) -> None:
        """A stream's read-ahead is now `new` bytes (its last message's), fits or not: gRPC
        receives them whether or not the budget has room."""
        self._take(new - old, new - old)
        if new < old:
            self._grant()

    def _take(self, size: int, read_ahead: int) -> None:
        was_within = self._held <= self.room_bytes
        self._held += size
        self._read_ahead += read_ahead
        self.peak_bytes = max(self.peak_bytes, self._held)
        if was_within and self._held > self.room_bytes:
            self.overcommits += 1
            if self._on_overcommit is not None:
                self._on_overcommit()

    def _fits_some_day(self, waiter: _Waiter) -> bool:
        """Fits once every frame and reserve is given back: read-ahead frees only when a
        stream ends (the waiter's own is counted in its size)."""
        needs = waiter.holding + waiter.size + waiter.headroom
        return self._read_ahead + needs <= self.room_bytes

    def _someone_waits_in_turn(self) -> bool:
        return any(self._fits_some_day(waiter) for waiter in self._waiters)

    def _grant(self) -> None:
        while self._waiters:
            reserve, read_ahead = self.first_read()
            for waiter in self._waiters:
                if waiter.first_read:
                    waiter.size = (reserve if waiter.with_frame else 0) + read_ahead
                    waiter.headroom = 0 if waiter.with_frame else reserve
                    waiter.read_ahead = read_ahead
            in_turn = next((w for w in self._waiters if self._fits_some_day(w)), None)
            if in_turn is None or self._held + in_turn.size > self.room_bytes:
                if self._held > self._read_ahead + sum(w.holding for w in self._waiters):
                    return  # frames running or waiting will give back what it needs
                # Nothing will be given back: a frame waiting for the rest of its size goes
                # first (it runs and gives back), else an open stream's next read; a new
                # stream's first read waits for a stream to end (it only adds read-ahead).
                passing = [w for w in self._waiters if not w.first_read or not self._read_ahead]
                finishing = next((w for w in passing if w.holding), None)
                in_turn = finishing or (in_turn if in_turn in passing else None)
                in_turn = in_turn or next(iter(passing), None)
                if in_turn is None:
                    return
            self._waiters.remove(in_turn)
            self._take(in_turn.size, in_turn.read_ahead)
            in_turn.granted.set_result(None)
