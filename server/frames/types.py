"""Camera-frame value types, at the bottom of `server.frames`: what a stream asks for, a frame on
its way from the network to the model and back, and the events a stream yields.

A frame's life in names: an `EncodedFrame` arrives (bytes as the camera sent them), waits in
its stream's slot as a `WaitingFrame` (with its arrival time), is chosen into a batch as a
`BatchFrame` (with its stream's options) or decoded on its own into a `DecodedFrame`, and its
result is a `FrameAnalysis` with the `StageTimes` it spent.
Behaviour modules import these downward and never from each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np

from server.analytics.types import AnalyticsConfig, AnalyticsEvent, LineCount, ZoneOccupancy
from server.errors import EdgeError
from server.models.types import OutputTensor
from server.vision.detections import Detection, DetectionFilter
from server.vision.postprocess import LabelScore
from server.vision.preprocess import MAX_PIXELS, FrameEncoding

# ---------------------------------------------------------------- what a stream asks for


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
    # Frames older than this when they would start are dropped as stale; 0 = no limit.
    max_age_ms: int = 0
    # Score threshold, max detections, classes and region of interest of this stream.
    detection: DetectionFilter = DetectionFilter()
    # Frames declaring more pixels are refused before decoding; the server's setting, not the
    # client's (the core sets it when the stream opens).
    max_pixels: int = MAX_PIXELS
    # Tracking, zones, lines and events; None: every frame is answered alone.
    analytics: AnalyticsConfig | None = None
    # The client sends a frame only when granted a credit (live streams only; see session.py).
    flow_credits: bool = False


# ---------------------------------------------------------------- a frame on its way


class UnitTurn(Protocol):
    """A running frame's place among the others at each unit of its model work (a detector
    run, a crop batch, a cascade stage): the scheduler's (server/frames/cost_shares.py)."""

    async def wait(self) -> None:
        """Return when the frame's next unit may start."""
        ...


@dataclass(frozen=True)
class EncodedFrame:
    """A camera frame as it arrived: its bytes (raw pixels, JPEG or PNG), not decoded yet."""

    sequence: int
    capture_time_ns: int
    data: bytes
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class WaitingFrame:
    """A frame accepted from the network, waiting in its stream's slot to be chosen."""

    frame: EncodedFrame
    arrival: float  # event-loop time it reached the server
    held_bytes: int = 0  # its share of the frame memory budget (server/frames/memory.py)


@dataclass(frozen=True)
class BatchFrame:
    """One row of a batch of plain frames: decoded, run and post-processed on the runner."""

    frame: EncodedFrame
    options: StreamOptions
    # Monotonic (event-loop clock) time after which the frame is stale; None: no limit.
    stale_after: float | None


@dataclass(frozen=True)
class DecodedFrame:
    """The full source frame and the region of interest the first model sees."""

    image: np.ndarray
    color: str
    view: np.ndarray
    offset_x: int = 0
    offset_y: int = 0


class DropReason(Enum):
    # A newer frame of the same stream arrived before this one was chosen.
    REPLACED = "replaced"
    # Older than the stream's max_age_ms when it would have started.
    STALE = "stale"
    # The model's queue was full (other clients flood it); live streams drop instead of failing.
    OVERLOADED = "overloaded"


# ---------------------------------------------------------------- what running it gave


@dataclass
class StageTimes:
    """Seconds spent per phase, summed over every stage and member of a frame."""

    queue_s: float = 0.0
    preprocess_s: float = 0.0
    infer_s: float = 0.0
    postprocess_s: float = 0.0
    # Requests (frames) that shared a model run with this frame, the frame counted once however
    # many rows it sent (pyramid levels, crops); 0: nothing ran.
    batch_size: int = 0

    def add(self, stage: StageTimes) -> None:
        """A frame's stages run one after another: their times add up; `batch_size` is the
        most frames any of their runs served."""
        self.queue_s += stage.queue_s
        self.preprocess_s += stage.preprocess_s
        self.infer_s += stage.infer_s
        self.postprocess_s += stage.postprocess_s
        self.batch_size = max(self.batch_size, stage.batch_size)


@dataclass(frozen=True)
class FrameAnalysis:
    version: str
    labels: list[LabelScore] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    tensors: list[OutputTensor] = field(default_factory=list)
    times: StageTimes = field(default_factory=StageTimes)
    # The frame went over its pipeline's work budget: answered with the part that fits.
    truncated: bool = False


# ---------------------------------------------------------------- what a stream yields


@dataclass(frozen=True)
class StreamOpenedEvent:
    stream_id: str
    model_name: str
    model_version: str
    max_in_flight: int
    policy: OverloadPolicy
    # Credits the client holds at open; 0: credits are off on this stream.
    flow_credits: int = 0


@dataclass(frozen=True)
class FrameTimings:
    """What a frame's result reports, in whole microseconds: queue + preprocess + inference +
    postprocess == total exactly."""

    queue_us: int
    preprocess_us: int
    inference_us: int
    postprocess_us: int
    total_us: int
    batch_size: int

    @property
    def queue_s(self) -> float:
        return self.queue_us / 1e6


@dataclass(frozen=True)
class FrameResultEvent:
    sequence: int
    capture_time_ns: int
    model_name: str
    model_version: str
    labels: list[LabelScore]
    tensors: list[OutputTensor]
    # Assembled by server.frames.work.timing.frame_timings alone.
    timings: FrameTimings
    # Capture to result on the server's clock (meaningful when the camera's clock agrees);
    # 0 when the frame carries no capture time or one in the future.
    age_us: int = 0
    detections: list[Detection] = field(default_factory=list)
    # With analytics: the zones' occupancy and the lines' counts after this frame.
    zones: tuple[ZoneOccupancy, ...] = ()
    lines: tuple[LineCount, ...] = ()
    # Over the pipeline's work budget: answered with the part that fit.
    truncated: bool = False


@dataclass(frozen=True)
class AnalyticsEventsEvent:
    """The analytics events one frame caused, yielded right after its result."""

    events: tuple[AnalyticsEvent, ...]


@dataclass(frozen=True)
class FramesDroppedEvent:
    sequences: tuple[int, ...]
    reason: str
    total_dropped: int
    reason_code: DropReason = DropReason.REPLACED


@dataclass(frozen=True)
class CreditsEvent:
    """The client may send this many more frames (flow credits)."""

    frames: int


@dataclass(frozen=True)
class FrameErrorEvent:
    sequence: int
    error: EdgeError


StreamEvent = (
    StreamOpenedEvent
    | FrameResultEvent
    | FramesDroppedEvent
    | FrameErrorEvent
    | AnalyticsEventsEvent
    | CreditsEvent
)
