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
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

# How far ahead of the lowest waiting stream a stream may be and still be served beside it,
# in frames of the cheapest stream (frames of one pull share the members' batches).
AHEAD_FRAMES = 1.0
# A floor for that margin before any frame was measured, in seconds.
MIN_AHEAD_S = 0.005
# Weight of the newest frame in a stream's and the model's moving averages of cost.
SMOOTHING = 0.3


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


def _smoothed(average: float, sample: float) -> float:
    return sample if average <= 0 else (1 - SMOOTHING) * average + SMOOTHING * sample
