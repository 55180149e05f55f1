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

import numpy as np

from server.errors import EdgeError, InvalidInput, Overloaded
from server.infer_types import OutputTensor
from server.manifest import Preprocess
from server.model_version import ModelVersion
from server.postprocess import LabelScore, top_k
from server.preprocess import MAX_PIXELS, FrameEncoding, decode_frame, to_model_input

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
    # Frames declaring more pixels are refused before they are decoded.
    max_pixels: int = MAX_PIXELS
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
                spec = model.manifest.preprocess
                assert spec is not None  # checked when the stream opened
                started = loop.time()
                tensor = await loop.run_in_executor(
                    self.preprocess_pool,
                    _prepare,
                    frame,
                    self.options.encoding,
                    spec,
                    self.max_pixels,
                )
                preprocessed = loop.time()
                outcome = await model.infer({spec.input: tensor})
                inferred = loop.time()
                labels, tensors = self._postprocess(model, outcome.outputs)
                done = loop.time()
                total = done - waiting.arrival
                queue_s = (started - waiting.arrival) + outcome.queue_s
                model.record_success(
                    total_s=total, queue_s=queue_s, input_s=preprocessed - started,
                    infer_s=outcome.infer_s, output_s=done - inferred,
                )  # fmt: skip
                event = FrameResultEvent(
                    sequence=frame.sequence,
                    capture_time_ns=frame.capture_time_ns,
                    model_name=model.name,
                    model_version=outcome.version,
                    labels=labels,
                    tensors=tensors,
                    queue_us=int(queue_s * 1e6),
                    preprocess_us=int((preprocessed - started) * 1e6),
                    inference_us=int(outcome.infer_s * 1e6),
                    postprocess_us=int((done - inferred) * 1e6),
                    total_us=int(total * 1e6),
                    batch_size=outcome.batch_rows,
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
            event = FrameErrorEvent(frame.sequence, EdgeError("internal error"))
        await self._out.put(event)

    def _postprocess(
        self, model: ModelVersion, outputs: dict[str, np.ndarray]
    ) -> tuple[list[LabelScore], list[OutputTensor]]:
        post = model.manifest.postprocess
        labels: list[LabelScore] = []
        if post.kind == "classification" and post.output:
            k = self.options.top_k or post.top_k
            labels = top_k(outputs[post.output], k, model.labels, apply_softmax=post.softmax)[0]
        tensors = (
            [OutputTensor(name, value[0]) for name, value in outputs.items()]
            if self.options.raw_tensors
            else []
        )
        return labels, tensors


def _prepare(
    frame: FrameIn, encoding: FrameEncoding, spec: Preprocess, max_pixels: int
) -> np.ndarray:
    """Runs in the preprocess pool: decode and turn into the model's input."""
    if not frame.data:
        raise InvalidInput(f"frame {frame.sequence} is empty")
    image, color = decode_frame(
        frame.data, encoding, frame.width, frame.height, target=(spec.height, spec.width),
        max_pixels=max_pixels,
    )  # fmt: skip
    return to_model_input(image, color, spec)
