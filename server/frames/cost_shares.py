"""Fair by cost: which stream's frame a model serves next, by the work its frames cost.

Cameras of one pipeline are not alike: a page of 280 text lines costs ppocr 40 times a photo's
work, an 8K frame the faces cascade 30 times a VGA one. Served by frame count, such a camera
took 40 times everyone else's share. This is start-time fair queueing (Goyal et al., 1996)
with measured costs:

- Each stream has a finish tag: the virtual time at which the work it was given so far ends.
  Its next frame starts at tag max(virtual time, finish tag); the virtual time moves to the
  start tag of the frame last started, and the finish tag moves on by the frame's estimated
  cost (the stream's recent average; the model's for a new stream).
- When the frame settles, its measured cost (decode, model runs, post-processing, every
  pipeline stage: `StageTimes.work_s`) replaces the estimate. A frame running longer than its
  estimate counts its overrun so far, so an expensive camera cannot start frame after frame
  before the first one's bill arrives.
- Streams are served in order of start tag, and a stream more than one frame of the cheapest
  stream ahead of the lowest waiting one waits while others have frames (it had its share).
  When nobody else has a frame waiting it is served: the device never idles for fairness.
An idle stream gains no credit (its tag never falls behind the virtual time), and a stream
that opens starts at the virtual time.

The same order holds at every unit of a running frame's work (`UnitTurns`): a frame runs its
next detector run, crop batch or cascade stage only while no frame of a stream more than one
cheap frame behind its own is running. A unit cannot be interrupted, and the members' queues
are first come, first served: beside a page of text, an honest ppocr frame otherwise waited
behind one crop batch per page at the recogniser and ran its detector side by side with the
page's batches on the same cores (its detector run 0.5 -> 1.0 s, recogniser wait up to 1.6 s,
age up to 3.5 s on a loaded 2-core machine). Now the page's next unit waits until the honest
frame is done, so the honest frame shares the device with at most the unit already running.
While a frame waits for its turn its overrun stands still: it is not using the device.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

# How far ahead of the lowest waiting stream a stream may be and still be served beside it,
# in frames of the cheapest stream (frames of one pull share the members' batches).
AHEAD_FRAMES = 1.0
# A floor for that margin before any frame was measured, in seconds.
MIN_AHEAD_S = 0.005
# Weight of the newest frame in a stream's and the model's moving averages of cost.
SMOOTHING = 0.3
# A unit waiting for its turn looks again at least this often: tags move with overruns between
# the events that wake it (a frame ending, a unit starting).
TURN_RECHECK_S = 0.05


@dataclass
class _Stream:
    finish: float
    estimate_s: float = 0.0
    # Frames started and not settled: token -> (loop time started, estimate charged).
    running: dict[int, tuple[float, float]] = field(default_factory=dict)

    def overrun(self, now: float) -> float:
        return sum(max(0.0, now - began - charged) for began, charged in self.running.values())


class CostShares:
    """Start-time fair queueing over one model's streams (keys are the scheduler's)."""

    def __init__(self) -> None:
        self._virtual = 0.0
        self._streams: dict[int, _Stream] = {}
        # Charged for a stream's first frame: the model's recent frames' average.
        self._new_stream_estimate_s = 0.0
        self._tokens = itertools.count(1)

    def add(self, key: int) -> None:
        if key not in self._streams:
            self._streams[key] = _Stream(finish=self._virtual)

    def remove(self, key: int) -> None:
        self._streams.pop(key, None)

    def tag(self, key: int, now: float) -> float:
        """The start tag the stream's next frame would get now."""
        stream = self._streams.get(key)
        if stream is None:
            return self._virtual
        return max(self._virtual, stream.finish + stream.overrun(now))

    def margin_s(self) -> float:
        """One frame of the cheapest stream (an expensive stream's frames must not widen it,
        or it would be served beside everyone again)."""
        costs = [stream.estimate_s for stream in self._streams.values() if stream.estimate_s > 0]
        return max(min(costs, default=0.0) * AHEAD_FRAMES, MIN_AHEAD_S)

    def fair(self, now: float) -> float:
        """The highest start tag still within its share: one cheap frame past the lowest open
        stream's."""
        lowest = min((self.tag(key, now) for key in self._streams), default=self._virtual)
        return lowest + self.margin_s()

    def goes_before(self, first: int, second: int, now: float) -> bool:
        """Whether stream `first` is more than one cheap frame behind `second`: its work
        comes first."""
        return self.tag(first, now) + self.margin_s() < self.tag(second, now)

    def held(self, key: int, token: int, seconds: float) -> None:
        """A running frame waited `seconds` for its turn at a unit: not an overrun."""
        stream = self._streams.get(key)
        if stream is not None and token in stream.running:
            began, charged = stream.running[token]
            stream.running[token] = (began + seconds, charged)

    def may_start_another(self, key: int, now: float, fair: float) -> bool:
        """Whether a stream with a frame running may start one more beside it: only while it
        is within its share (its tag, running frames' overruns included, at most `fair`). A
        stream past its share is served only when nobody else waits, and then one frame at a
        time: each of its frames queues stages at the members (a page's crop batches), and
        honest ppocr frames waited 3 to 10 s behind those of up to four pages at once."""
        stream = self._streams.get(key)
        if stream is None or not stream.running:
            return True
        return self.tag(key, now) <= fair

    def started(self, key: int, now: float) -> int:
        """A frame of the stream starts: charge its estimate. Returns its token."""
        self.add(key)
        stream = self._streams[key]
        self._virtual = max(self._virtual, self.tag(key, now))
        estimate = stream.estimate_s or self._new_stream_estimate_s
        stream.finish = max(stream.finish, self._virtual) + estimate
        token = next(self._tokens)
        stream.running[token] = (now, estimate)
        return token

    def settled(self, key: int, token: int, cost_s: float | None) -> None:
        """The frame finished (`cost_s` measured) or ended unmeasured (None: the estimate
        stands)."""
        stream = self._streams.get(key)
        if stream is None:
            return
        _, charged = stream.running.pop(token, (0.0, 0.0))
        if cost_s is None:
            return
        stream.finish += cost_s - charged
        stream.estimate_s = _smoothed(stream.estimate_s, cost_s)
        self._new_stream_estimate_s = _smoothed(self._new_stream_estimate_s, cost_s)


class FrameTurn:
    """One running frame's turns at its units of work (server.frames.types.UnitTurn).
    `released` is done once the frame no longer needs its pull's slot: it ended, or it waited
    for its turn (the device is serving others), or the scheduler released it at its start."""

    def __init__(self, turns: UnitTurns, key: int, token: int) -> None:
        self._turns = turns
        self.key = key
        self.token = token
        self.released: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def release(self) -> None:
        if not self.released.done():
            self.released.set_result(None)

    async def wait(self) -> None:
        await self._turns.wait(self)


class UnitTurns:
    """Start-time fair order at every unit of the running frames' work (see the module's
    docstring): a frame's unit waits while a frame of a stream more than one cheap frame behind
    its own is running. Frames of the lowest streams never wait, so waits never form a cycle."""

    def __init__(self, shares: CostShares) -> None:
        self._shares = shares
        self._running: dict[int, FrameTurn] = {}  # by token
        self._changed = asyncio.Event()

    def turn(self, key: int, token: int) -> FrameTurn:
        return FrameTurn(self, key, token)

    def began(self, turn: FrameTurn) -> None:
        self._running[turn.token] = turn
        self._wake()

    def ended(self, turn: FrameTurn) -> None:
        self._running.pop(turn.token, None)
        turn.release()
        self._wake()

    async def wait(self, turn: FrameTurn) -> None:
        loop = asyncio.get_running_loop()
        self._wake()  # a unit boundary: units waiting behind this frame look again
        while self._behind(turn, loop.time()):
            turn.release()
            changed, began = self._changed, loop.time()
            try:
                async with asyncio.timeout(TURN_RECHECK_S):
                    await changed.wait()
            except TimeoutError:
                pass
            finally:
                self._shares.held(turn.key, turn.token, loop.time() - began)

    def _behind(self, turn: FrameTurn, now: float) -> bool:
        return any(
            other.key != turn.key and self._shares.goes_before(other.key, turn.key, now)
            for other in self._running.values()
        )

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _smoothed(average: float, sample: float) -> float:
    return sample if average <= 0 else (1 - SMOOTHING) * average + SMOOTHING * sample
