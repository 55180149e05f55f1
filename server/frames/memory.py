"""One byte budget for the camera frames every stream holds: waiting, running and decoded.

Each stream's window bounds its own frames, but not all streams together: one BLOCK stream
with a window of 64 raw 4K frames took RSS from 139 to 2,241 MB, and 1,024 streams may be open.
A frame holds its bytes as received plus its decoded pixels (`frame_bytes`) from the moment it
is accepted until its result, drop or failure, so what all streams hold never exceeds the
budget:
- a BLOCK stream holds a reserve (its last frame's size; before its first, what the largest
  message may hold, `largest_frame_bytes`) before it asks gRPC for its next message (gRPC
  receives a message whole once asked), so when the budget is full it stops
  reading and gRPC flow control holds its sender back; a frame needing more than the reserve
  gives it back and waits for its whole size; a stream whose sender sends nothing for a
  second gives the reserve back, so an idle stream holds nothing (its next frame waits for
  its whole size once received);
- a live stream keeps reading and drops a frame that does not fit (`overloaded`, "frame
  memory budget full");
- a frame needing more than the whole budget is refused (RESOURCE_EXHAUSTED), never waited for.

Outside the budget, before our code runs: once a stream has taken a message, gRPC receives
its next one (up to `max_message_bytes`) on its own, one per open stream with bandwidth-delay
probing off (`grpc_bdp_probe`; on, its windows grow to several messages per stream), and a
BLOCK frame waiting for its whole size keeps its bytes as received (an idle stream's, or one
larger than its reserve). 64 BLOCK streams of raw 4K frames under a 256 MiB budget peaked at
2.1 GB RSS (ready at 0.15): the budget plus gRPC's read-ahead and its copies of the messages
being received (tests/server/test_frame_memory_rss.py). The decoded pixels, the large part,
are always inside it. The default budget is a share of the device's memory (`default_budget`).
"""

from __future__ import annotations

import asyncio
from collections import deque

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


class FrameMemory:
    """The bytes held by the frames of all streams, against one budget. Event loop only."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.peak_bytes = 0
        self._held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def held_bytes(self) -> int:
        return self._held

    def too_large(self, size: int) -> bool:
        """A frame that could never fit, even alone."""
        return size > self.budget_bytes

    def describe(self, size: int) -> str:
        return (
            f"frame needs {size / MB:.1f} MiB (bytes and decoded pixels); frame memory "
            f"budget {self.budget_bytes / MB:.1f} MiB, {self._held / MB:.1f} MiB held"
        )

    def try_hold(self, size: int) -> bool:
        """Hold `size` bytes now if they fit (live streams); False: drop the frame."""
        if self._waiters or self._held + size > self.budget_bytes:
            return False
        self._take(size)
        return True

    async def hold(self, size: int) -> None:
        """Hold `size` bytes (at most the budget), waiting in turn until they fit (BLOCK)."""
        if not self._waiters and self._held + size <= self.budget_bytes:
            self._take(size)
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted just as it was cancelled
            else:
                self._waiters.remove(entry)
                self._grant()
            raise

    def release(self, size: int) -> None:
        self._held = max(0, self._held - size)
        self._grant()

    def _take(self, size: int) -> None:
        self._held += size
        self.peak_bytes = max(self.peak_bytes, self._held)

    def _grant(self) -> None:
        while self._waiters and self._held + self._waiters[0][0] <= self.budget_bytes:
            size, waiter = self._waiters.popleft()
            self._take(size)
            waiter.set_result(None)
