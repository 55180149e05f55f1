"""One camera stream: its waiting slot, its overload policy, its results.

The stream does not run frames itself: the model's FrameScheduler (server/frames/scheduler.py)
pulls them when the model has room, fairly across streams, and decodes only what it takes.
- drop_oldest (live cameras): the stream holds at most its newest undecoded frame; a newer one
  replaces it and the replaced frame is reported dropped (`replaced`). At most `window` frames
  of the stream run at once.
- block (recorded video): up to `window` frames wait or run, in order; the server stops reading
  the stream until there is room, gRPC flow control pushes back on the sender, nothing is lost.
- `max_age_ms`: a frame older than this (since it reached the server) when the scheduler would
  take or queue it is reported dropped (`stale`) and never runs.
- flow credits (a live stream that asks for them): the client holds at most one credit, spends
  it on its newest frame, and gets the next one (`offer_credit`) when the scheduler sees the
  stream's turn coming, so a frame arrives shortly before it runs and none is sent only to be
  replaced. A credited frame that a pull passed over (another stream's turn came first) gets
  a fresh credit when its own turn comes, and the newer frame replaces it. A frame refused on
  arrival (memory budget) wakes the scheduler, so the stream is offered its next credit. A
  client that sends without credits meets drop_oldest as before.
- Every frame holds its bytes and decoded pixels in the server's frame memory budget
  (server/frames/memory.py) from when it is read until it is answered or dropped: a BLOCK
  stream holds a reserve before it reads its next message, and from its first frame what
  gRPC may receive for it unasked (its read-ahead), and waits while the budget is full (a
  stream whose sender stays idle gives the reserve back); a live stream drops the frame
  (`overloaded`, "frame memory budget full"); a frame larger than the whole budget gets a
  FrameError (RESOURCE_EXHAUSTED).
A bad frame gets a FrameError and the stream goes on. Closing the stream releases its waiting
frames, its memory and its share of the model at once; its running detector and pipeline
frames are cancelled (server/frames/scheduler.py), a plain batch already running finishes and
is discarded.
When the server shuts down (`shut_down`), the stream reads no further frame at once, answers
the frames it had accepted, then ends with ShuttingDown (gRPC UNAVAILABLE).
Analytics at the end: when the client ends its side (and waits for its answers) or the server
shuts down, once the last frame is answered every live track leaves its zones and disappears
(one `events` message before the stream ends). A stream that breaks or is cancelled can carry
nothing more: its tracks end without events, and the client knows the stream ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from server.analytics.stream import FrameInfo, StreamAnalytics
from server.analytics.types import FrameAnalytics
from server.errors import EdgeError, Overloaded, RequestTooLarge, ShuttingDown
from server.frames.memory import (
    FrameMemory,
    frame_bytes,
    read_ahead_bytes_of,
)
from server.frames.scheduler import FrameScheduler
from server.frames.types import (
    AnalyticsEventsEvent,
    CreditsEvent,
    DropReason,
    EncodedFrame,
    FrameAnalysis,
    FrameErrorEvent,
    FrameResultEvent,
    FramesDroppedEvent,
    OverloadPolicy,
    StreamEvent,
    StreamOptions,
    WaitingFrame,
)
from server.frames.work.timing import frame_timings
from server.models.version import ModelVersion
from server.observability.metrics import StreamMetrics
from server.vision.preprocess import FrameEncoding, declared_size

log = logging.getLogger(__name__)


# Frames replaced in the slot are reported together, with the stream's next message or at the
# latest this long after the first of them: at 16 cameras most frames are replaced, and one
# `dropped` message per frame was a large share of the event loop's gRPC work.
REPLACED_REPORT_S = 0.1

# A BLOCK stream's sender that sends nothing for this long is idle: the stream gives back the
# reserve it holds for its next frame, which then waits for its memory once received.
READ_RESERVE_IDLE_S = 1.0

ModelResolver = Callable[[], ModelVersion]


class FrameSession:
    def __init__(
        self,
        options: StreamOptions,
        window: int,
        scheduler: FrameScheduler,
        resolve_model: ModelResolver,
        metrics: StreamMetrics,
        memory: FrameMemory,
    ) -> None:
        self.options = options
        self.lossless = options.policy is OverloadPolicy.BLOCK
        self.dropped_total = 0
        self._window = window
        self._scheduler = scheduler
        self._resolve = resolve_model
        self._metrics = metrics
        self._memory = memory
        # Budget bytes of the frames running, by sequence (a client may repeat one): released
        # with their result, drop or error, or when the stream closes.
        self._running_bytes: dict[int, list[int]] = {}
        # What a BLOCK stream holds before it asks gRPC for its next message: its last frame's
        # size (a camera's frames are alike), before the first that of the largest frame
        # streams read last; gRPC receives a message whole once asked, and without a first
        # reserve 64 streams' first 4K frames were all taken in at once, past the budget. A
        # stream whose sender sends nothing for READ_RESERVE_IDLE_S gives it back
        # (`_reserved`).
        # Besides, from its first frame until it ends, the stream holds its read-ahead
        # (`_read_ahead`): gRPC receives its next message's bytes before it asks, as many as
        # its last message's (`read_ahead_bytes_of`), room or not: 64 streams of 4K frames
        # took 1.5 GB past the budget that way. Before a read the stream holds the
        # read-ahead it expects (`_next_read_ahead`), after it what its message had.
        self._read_reserve = self._next_read_ahead = 0  # before the first: `first_read`
        self._reserved = 0
        self._read_ahead = 0
        self._max_age_s = options.max_age_ms / 1000 if options.max_age_ms > 0 else None
        self._slot: deque[WaitingFrame] = deque()
        self._running = 0
        # Results and drop notices. The reader waits while `_out_limit` are unread, so a client
        # that stops reading stalls its own stream (and its sender, through gRPC flow control);
        # results of running frames add at most `window` more.
        self._out: deque[StreamEvent | None] = deque()
        self._out_limit = window * 2 + 4
        self._out_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._failure: BaseException | None = None
        self._closed = False
        self._replaced: list[int] = []
        self._replaced_timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._input_done = False  # the client sent its last frame: the reader ends the stream
        self._shutting_down = False
        # Credits the client holds: frames it may send. One at most, the frame for the slot.
        self.flow_credits = options.flow_credits and not self.lossless
        self._credits = 1 if self.flow_credits else 0
        self._credit_granted_at: float | None = None
        # Tracking, zones and lines see results in the order they are delivered; a result that
        # overtakes an older frame's leaves that one untracked (server/analytics/tracker.py).
        self._analytics = (
            StreamAnalytics(options.analytics) if options.analytics is not None else None
        )

    async def run(self, frames: AsyncIterator[EncodedFrame]) -> AsyncGenerator[StreamEvent, None]:
        self._scheduler.add(self)
        reader = asyncio.create_task(self._read(frames), name="frame-reader")
        self._reader = reader
        if self._shutting_down:  # the server began to stop as the stream opened
            reader.cancel()
            self._end_if_drained()
        try:
            while True:
                while not self._out:
                    self._out_ready.clear()
                    await self._out_ready.wait()
                event = self._out.popleft()
                self._room.set()
                if event is None:
                    break
                yield event
            if self._failure is not None:
                raise self._failure
        finally:
            self._closed = True
            if self._replaced_timer is not None:
                self._replaced_timer.cancel()
            self._scheduler.remove(self)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            for waiting in self._slot:
                self._memory.release(waiting.held_bytes)
            self._slot.clear()
            for sizes in self._running_bytes.values():
                for size in sizes:
                    self._memory.release(size)
            self._running_bytes.clear()
            self._give_back_read_ahead()

    async def _read(self, frames: AsyncIterator[EncodedFrame]) -> None:
        loop = asyncio.get_running_loop()
        incoming = aiter(frames)
        try:
            while True:
                while len(self._out) >= self._out_limit or (
                    self.lossless and len(self._slot) + self._running >= self._window
                ):
                    self._room.clear()
                    await self._room.wait()
                if self.lossless:  # the sender waits until there is room: nothing is lost
                    frame = await self._read_reserved(incoming)
                    reserve, self._reserved = self._reserved, 0
                else:
                    frame = await self._read_live(incoming)
                    reserve = 0
                message_bytes = read_ahead_bytes_of(frame)  # what gRPC may hold ahead: as much
                self._next_read_ahead = message_bytes
                self._memory.resize_read_ahead(self._read_ahead, self._next_read_ahead)
                self._read_ahead = self._next_read_ahead
                arrival = loop.time()
                self._memory.received(message_bytes)
                if self._credits and self._credit_granted_at is not None:
                    self._scheduler.credit_used(arrival - self._credit_granted_at)
                self._credit_granted_at = None
                self._credits = max(self._credits - 1, 0)  # a flooding client just gets none
                size = frame_bytes(frame, self.options.encoding, self.options.max_pixels)
                if self._memory.too_large(size):
                    self._memory.release(reserve)
                    self._refuse_too_large(frame, size)
                    self._scheduler.frame_waiting()  # a credited stream gets its next credit
                    continue
                expected = min(size, self._memory.budget_bytes)  # the next frame's, alike
                self._memory.read(expected, self._read_ahead)
                if self.lossless:
                    self._read_reserve = expected
                    if size <= reserve:
                        self._memory.release(reserve - size)
                    else:  # keeps its reserve while it waits for the rest: given back, it let
                        # the next stream start and take in a frame too large for it (an idle
                        # stream's frame arrives with none)
                        self._metrics.memory_waited()
                        try:
                            await self._memory.hold(size - reserve, holding=reserve)
                        except BaseException:
                            self._memory.release(reserve)
                            raise
                else:
                    if self._slot:
                        replaced = self._slot.popleft()
                        self._memory.release(replaced.held_bytes)
                        self._drop(replaced, DropReason.REPLACED, None)
                    if not self._memory.try_hold(size):
                        self._metrics.memory_dropped()
                        text = f"frame memory budget full: {self._memory.describe(size)}"
                        self._drop(WaitingFrame(frame, arrival), DropReason.OVERLOADED, None, text)
                        self._scheduler.frame_waiting()  # a credited stream gets its next credit
                        continue
                self._slot.append(WaitingFrame(frame, arrival, size))
                self._scheduler.frame_waiting()
        except StopAsyncIteration:
            self._give_back_read_ahead()  # the sender is done: nothing more comes
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced to the transport after pending results
            self._failure = exc
            self._push(None)
            return
        self._input_done = True
        while self._slot or self._running:
            self._room.clear()
            await self._room.wait()
        self._end_stream()

    async def _read_reserved(self, incoming: AsyncIterator[EncodedFrame]) -> EncodedFrame:
        """The next frame, asked for while holding the reserve (`_reserved`) unless the sender
        stayed idle for READ_RESERVE_IDLE_S, when it is given back, and the read-ahead."""
        if self._next_read_ahead:
            more_read_ahead = self._next_read_ahead - self._read_ahead
            await self._memory.hold(self._read_reserve + more_read_ahead, more_read_ahead)
        else:  # the first frame: its sizes as those of the frames read when its turn comes
            self._read_reserve, self._next_read_ahead = await self._memory.hold_first_read()
        self._read_ahead = self._next_read_ahead
        self._reserved = self._read_reserve
        idle = asyncio.get_running_loop().call_later(READ_RESERVE_IDLE_S, self._give_back_reserve)
        try:
            return await anext(incoming)
        except BaseException:
            self._give_back_reserve()
            raise
        finally:
            idle.cancel()

    async def _read_live(self, incoming: AsyncIterator[EncodedFrame]) -> EncodedFrame:
        """The next frame of a live stream, asked for once its read-ahead is held: it reads
        whatever comes and drops what does not fit, but gRPC's read-ahead for it is there
        all the same (64 live streams of 4K frames: 1.5 GB)."""
        if not self._next_read_ahead:  # the first frame
            _, self._next_read_ahead = await self._memory.hold_first_read(with_frame=False)
        elif self._next_read_ahead > self._read_ahead:
            more = self._next_read_ahead - self._read_ahead
            await self._memory.hold(more, more)
        self._read_ahead = self._next_read_ahead
        return await anext(incoming)

    def _give_back_reserve(self) -> None:
        self._memory.release(self._reserved)
        self._reserved = 0

    def _give_back_read_ahead(self) -> None:
        self._memory.release(self._read_ahead, self._read_ahead)
        self._read_ahead = 0

    def _refuse_too_large(self, frame: EncodedFrame, size: int) -> None:
        """A frame that could never fit in the budget, even alone: an error, never a wait."""
        self._metrics.memory_refused()
        self._metrics.failed()
        error = RequestTooLarge(f"frame {frame.sequence}: {self._memory.describe(size)}")
        self._push(FrameErrorEvent(frame.sequence, error))

    # ---- called by the core ----

    def shut_down(self) -> None:
        """The server is shutting down: read no further frame; once the frames already accepted
        are answered, end the stream with ShuttingDown. A client that has sent its last frame
        gets its answers and the stream's ordinary end."""
        if self._shutting_down or self._input_done:
            return
        self._shutting_down = True
        if self._reader is not None:  # else `run` ends the stream as it starts
            self._reader.cancel()
            self._end_if_drained()

    # ---- called by the scheduler ----

    @property
    def credits(self) -> int:
        """Credits the client holds now (at open: those StreamOpened grants)."""
        return self._credits

    @property
    def expects_frame(self) -> bool:
        """A frame is waiting, or the client holds a credit for one."""
        return bool(self._slot) or self._credits > 0

    def offer_credit(self, replace_before: float) -> bool:
        """The stream's turn is near: grant the client a credit if it uses credits, holds none,
        could run one more and has no frame waiting, or only one that arrived before
        `replace_before` (passed over by a pull, and old: its client sends a fresh one to
        replace it). True when granted."""
        if (
            not self.flow_credits
            or self._credits
            or (self._slot and self._slot[-1].arrival >= replace_before)
            or self._running >= self._window
            or self._closed
            or self._input_done
            or self._shutting_down
        ):
            return False
        self._credits = 1
        self._credit_granted_at = asyncio.get_running_loop().time()
        self._push(CreditsEvent(1))
        return True

    @property
    def has_frame(self) -> bool:
        """A frame is waiting and the stream may run one more."""
        return bool(self._slot) and self._running < self._window

    def take(self, now: float | None, model: ModelVersion | None) -> WaitingFrame | None:
        """The next frame to run (newest for live streams, oldest for BLOCK), or None.
        Frames over the stream's age limit are reported stale on the way."""
        while self._slot and self._running < self._window:
            waiting = self._slot.popleft()
            if now is not None and self.too_old(waiting, now):
                self._memory.release(waiting.held_bytes)
                self._drop(waiting, DropReason.STALE, model)
                continue
            self._running += 1
            self._running_bytes.setdefault(waiting.frame.sequence, []).append(waiting.held_bytes)
            self._room.set()
            return waiting
        self._end_if_drained()  # its last waiting frames may have gone stale
        return None

    def stale_after(self, waiting: WaitingFrame) -> float | None:
        """The loop time after which `waiting` may no longer start; None: no age limit."""
        return None if self._max_age_s is None else waiting.arrival + self._max_age_s

    def too_old(self, waiting: WaitingFrame, now: float) -> bool:
        return self._max_age_s is not None and now - waiting.arrival > self._max_age_s

    def deliver_result(
        self, model: ModelVersion, waiting: WaitingFrame, analysis: FrameAnalysis
    ) -> None:
        self._finished(waiting.frame.sequence)
        done = asyncio.get_running_loop().time()
        frame, times = waiting.frame, analysis.times
        timings = frame_timings(times, waiting.arrival, done)
        total = done - waiting.arrival
        model.record_success(
            total_s=total, queue_s=timings.queue_s, input_s=times.preprocess_s,
            infer_s=times.infer_s, output_s=times.postprocess_s,
        )  # fmt: skip
        self._metrics.answered(total)
        if analysis.truncated:
            self._metrics.truncated()
        if self._closed:
            return
        age_ns = time.time_ns() - frame.capture_time_ns if frame.capture_time_ns > 0 else -1
        outcome = FrameAnalytics(analysis.detections)
        if self._analytics is not None:
            info = FrameInfo(self.options.stream_id, model.name, analysis.version,
                             frame.sequence, frame.capture_time_ns)  # fmt: skip
            # Capture time, so frames skipped for freshness are longer steps, not missed ones;
            # arrival time when the camera gives none.
            moment = frame.capture_time_ns / 1e9 if frame.capture_time_ns > 0 else waiting.arrival
            try:
                outcome = self._analytics.update(
                    moment, analysis.detections, info, self._frame_size(frame)
                )
            except Exception:  # a bug here must not cost the frame its answer
                log.exception("analytics failed on stream %s", self.options.stream_id)
        self._push(
            FrameResultEvent(
                sequence=frame.sequence,
                capture_time_ns=frame.capture_time_ns,
                model_name=model.name,
                model_version=analysis.version,
                labels=analysis.labels,
                tensors=analysis.tensors,
                timings=timings,
                age_us=age_ns // 1000 if age_ns >= 0 else 0,
                detections=outcome.detections,
                zones=outcome.zones,
                lines=outcome.lines,
                truncated=analysis.truncated,
            )
        )
        if outcome.events:
            self._push(AnalyticsEventsEvent(outcome.events))

    def _frame_size(self, frame: EncodedFrame) -> tuple[int, int]:
        """(width, height) of the frame, for zones given in fractions of it."""
        assert self._analytics is not None
        if not self._analytics.needs_frame_size:
            return (0, 0)
        if self.options.encoding in (FrameEncoding.JPEG, FrameEncoding.PNG):
            height, width = declared_size(frame.data, self.options.encoding)
            return (width, height)
        return (frame.width, frame.height)

    def charged(self, cost_s: float) -> None:
        """One of this stream's frames cost the device `cost_s` (shown in metrics)."""
        self._metrics.cost(cost_s)

    def deliver_error(self, sequence: int, error: EdgeError) -> None:
        self._finished(sequence)
        self._metrics.failed()
        if not self._closed:
            self._push(FrameErrorEvent(sequence, error))

    def deliver_overloaded(
        self, waiting: WaitingFrame, error: Overloaded, model: ModelVersion
    ) -> None:
        if self.lossless:
            self.deliver_error(waiting.frame.sequence, error)
            return
        self._finished(waiting.frame.sequence)
        self._drop(waiting, DropReason.OVERLOADED, model, f"model queue full: {error}")

    def deliver_stale(self, waiting: WaitingFrame, model: ModelVersion) -> None:
        self._finished(waiting.frame.sequence)
        self._drop(waiting, DropReason.STALE, model)

    # ---- inside ----

    def _finished(self, sequence: int) -> None:
        sizes = self._running_bytes.get(sequence)
        if sizes:
            self._memory.release(sizes.pop(0))
            if not sizes:
                del self._running_bytes[sequence]
        self._running -= 1
        self._room.set()
        self._scheduler.frame_waiting()  # this stream may take its next frame now
        self._end_if_drained()

    def _end_if_drained(self) -> None:
        if not self._shutting_down or self._slot or self._running or self._failure is not None:
            return
        self._failure = ShuttingDown(
            "server shutting down: the frames it accepted were answered, no more are taken"
        )
        # After the answer being delivered now (`_finished` comes before its push).
        asyncio.get_running_loop().call_soon(self._end_stream)

    def _end_stream(self) -> None:
        """Every frame is answered: the live tracks leave their zones and disappear (the
        stream can still carry that), then the stream ends."""
        if self._analytics is not None and not self._closed:
            try:
                events = self._analytics.end()
            except Exception:  # a bug here must not keep the stream from ending
                log.exception("analytics failed on stream %s", self.options.stream_id)
                events = ()
            if events:
                self._push(AnalyticsEventsEvent(events))
        self._push(None)

    def _push(self, event: StreamEvent | None) -> None:
        self._report_replaced()  # in order: the replaced frames were dropped before this
        self._out.append(event)
        self._out_ready.set()

    def _report_replaced(self) -> None:
        if self._replaced_timer is not None:
            self._replaced_timer.cancel()
            self._replaced_timer = None
        if not self._replaced:
            return
        sequences, self._replaced = tuple(self._replaced), []
        if not self._closed:
            self._out.append(
                FramesDroppedEvent(
                    sequences, "replaced by a newer frame", self.dropped_total, DropReason.REPLACED
                )
            )
            self._out_ready.set()

    def _drop(
        self, waiting: WaitingFrame, reason: DropReason, model: ModelVersion | None, text: str = ""
    ) -> None:
        self.dropped_total += 1
        self._metrics.dropped(reason.value)
        if model is None:
            with contextlib.suppress(EdgeError):  # the model may be gone; the count stays
                model = self._resolve()
        if model is not None:
            model.record_drops(1)
        if self._closed:
            return
        if reason is DropReason.REPLACED and not text:
            self._replaced.append(waiting.frame.sequence)
            if self._replaced_timer is None:
                self._replaced_timer = asyncio.get_running_loop().call_later(
                    REPLACED_REPORT_S, self._report_replaced
                )
            return
        if not text:
            if reason is DropReason.STALE:
                waited_ms = (asyncio.get_running_loop().time() - waiting.arrival) * 1000
                text = f"stale: {waited_ms:.0f} ms old, over max_age_ms {self.options.max_age_ms}"
            else:
                text = "replaced by a newer frame"
        self._push(FramesDroppedEvent((waiting.frame.sequence,), text, self.dropped_total, reason))
