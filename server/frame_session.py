"""One camera stream: a bounded in-flight window, an overload policy, per-frame results.

Frames are decoded and preprocessed in a shared thread pool, then join the model's dynamic
batcher with every other stream and unary call. At most `window` frames are in flight.
- drop_oldest (live cameras): when the window is full the newest frame waits in a one-frame
  mailbox; a newer one replaces it and the replaced frame is reported dropped. Frames already
  started always finish, so a camera never starves and latency stays bounded.
- block (recorded video): the server stops reading the stream until the window has room;
  gRPC flow control pushes back on the sender and no frame is lost.
A bad frame gets a FrameError and the stream goes on. Cancelling the stream cancels every
task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import Enum

from server.detections import Detection, DetectionFilter
from server.errors import EdgeError, Overloaded
from server.frame_analysis import analyze_frame
from server.infer_types import OutputTensor
from server.model_version import ModelVersion
from server.postprocess import LabelScore
from server.preprocess import MAX_PIXELS, FrameEncoding

log = logging.getLogger(__name__)


class OverloadPolicy(Enum):
    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


@dataclass(frozen=True)
class StreamOptions:
    model_name: str
    encoding: FrameEncoding
    model_version: str = ""
    source_fps: float = 0.0
    policy: OverloadPolicy = OverloadPolicy.DROP_OLDEST
    max_in_flight: int = 0
    top_k: int = 0
    raw_tensors: bool = False
    stream_id: str = ""
    # Score threshold, max detections, classes and region of interest of this stream.
    detection: DetectionFilter = DetectionFilter()
    # Frames declaring more pixels are refused before decoding; the server's setting, not the
    # client's (the core sets it when the stream opens).
    max_pixels: int = MAX_PIXELS


@dataclass(frozen=True)
class FrameIn:
    sequence: int
    capture_time_ns: int
    data: bytes
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class StreamOpenedEvent:
    stream_id: str
    model_name: str
    model_version: str
    max_in_flight: int
    policy: OverloadPolicy


@dataclass(frozen=True)
class FrameResultEvent:
    sequence: int
    capture_time_ns: int
    model_name: str
    model_version: str
    labels: list[LabelScore]
    tensors: list[OutputTensor]
    queue_us: int
    preprocess_us: int
    inference_us: int
    postprocess_us: int
    total_us: int
    batch_size: int
    detections: list[Detection] = field(default_factory=list)


@dataclass(frozen=True)
class FramesDroppedEvent:
    sequences: tuple[int, ...]
    reason: str
    total_dropped: int


@dataclass(frozen=True)
class FrameErrorEvent:
    sequence: int
    error: EdgeError


StreamEvent = StreamOpenedEvent | FrameResultEvent | FramesDroppedEvent | FrameErrorEvent

ModelResolver = Callable[[], ModelVersion]


@dataclass
class _Waiting:
    frame: FrameIn
    arrival: float


@dataclass
class FrameSession:
    options: StreamOptions
    window: int
    resolve_model: ModelResolver
    preprocess_pool: Executor
    dropped_total: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _mailbox: _Waiting | None = None
    _failure: BaseException | None = None
    _closing: bool = False

    def __post_init__(self) -> None:
        # Results and drop notices; bounded so a client that stops reading stalls its own
        # stream (and, through gRPC flow control, its sender) instead of growing memory.
        self._out: asyncio.Queue[StreamEvent | None] = asyncio.Queue(maxsize=self.window * 2 + 4)
        self._slot_freed = asyncio.Event()

    async def run(self, frames: AsyncIterator[FrameIn]) -> AsyncGenerator[StreamEvent, None]:
        reader = asyncio.create_task(self._read(frames), name="frame-reader")
        try:
            while (event := await self._out.get()) is not None:
                yield event
            if self._failure is not None:
                raise self._failure
        finally:
            self._closing = True
            self._mailbox = None
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(reader, *self._tasks, return_exceptions=True)

    async def _read(self, frames: AsyncIterator[FrameIn]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for frame in frames:
                arrival = loop.time()
                if self.options.policy is OverloadPolicy.BLOCK:
                    while len(self._tasks) >= self.window:
                        self._slot_freed.clear()
                        await self._slot_freed.wait()
                    self._start(_Waiting(frame, arrival))
                elif len(self._tasks) < self.window:
                    self._start(_Waiting(frame, arrival))
                else:
                    replaced, self._mailbox = self._mailbox, _Waiting(frame, arrival)
                    if replaced is not None:
                        await self._report_drop(replaced.frame.sequence, "in-flight window full")
            while self._tasks or self._mailbox is not None:
                self._slot_freed.clear()
                await self._slot_freed.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced to the transport after pending results
            self._failure = exc
        await self._out.put(None)

    async def _report_drop(self, sequence: int, reason: str) -> None:
        self.dropped_total += 1
        with contextlib.suppress(EdgeError):  # the model may be gone; the count stays
            self.resolve_model().record_drops(1)
        await self._out.put(FramesDroppedEvent((sequence,), reason, self.dropped_total))

    def _start(self, waiting: _Waiting) -> None:
        task = asyncio.create_task(self._process(waiting))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._closing:
            return
        if self._mailbox is not None and len(self._tasks) < self.window:
            waiting, self._mailbox = self._mailbox, None
            self._start(waiting)
        self._slot_freed.set()

    async def _process(self, waiting: _Waiting) -> None:
        loop = asyncio.get_running_loop()
        frame = waiting.frame
        event: StreamEvent
        model: ModelVersion | None = None
        try:
            model = self.resolve_model()
            with model.lease():
                started = loop.time()
                analysis = await analyze_frame(model, frame, self.options, self.preprocess_pool)
                done = loop.time()
                times = analysis.times
                total = done - waiting.arrival
                queue_s = (started - waiting.arrival) + times.queue_s
                model.record_success(
                    total_s=total, queue_s=queue_s, input_s=times.preprocess_s,
                    infer_s=times.infer_s, output_s=times.postprocess_s,
                )  # fmt: skip
                event = FrameResultEvent(
                    sequence=frame.sequence,
                    capture_time_ns=frame.capture_time_ns,
                    model_name=model.name,
                    model_version=analysis.version,
                    labels=analysis.labels,
                    tensors=analysis.tensors,
                    queue_us=int(queue_s * 1e6),
                    preprocess_us=int(times.preprocess_s * 1e6),
                    inference_us=int(times.infer_s * 1e6),
                    postprocess_us=int(times.postprocess_s * 1e6),
                    total_us=int(total * 1e6),
                    batch_size=times.batch_rows,
                    detections=analysis.detections,
                )
        except Overloaded as exc:
            if model is not None:
                model.record_failure(loop.time() - waiting.arrival, "overloaded")
            if self.options.policy is OverloadPolicy.DROP_OLDEST:
                await self._report_drop(frame.sequence, f"model queue full: {exc}")
                return
            event = FrameErrorEvent(frame.sequence, exc)
        except EdgeError as exc:
            if model is not None:
                model.record_failure(loop.time() - waiting.arrival)
            event = FrameErrorEvent(frame.sequence, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream %s: frame %d failed", self.options.stream_id, frame.sequence)
            if model is not None:  # a runtime error is a failed inference too
                model.record_failure(loop.time() - waiting.arrival)
            event = FrameErrorEvent(frame.sequence, EdgeError("internal error"))
        await self._out.put(event)
