"""What a detector finds in a frame, in the frame's own pixels, and how a frame maps to a model.

`Detection` is the domain record every detection postprocess and pipeline stage produces and
the transports convert. `FrameTransform` remembers how a frame was cut (region of interest),
scaled and padded on its way into the model, so boxes found in model pixels go back to source
pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class TrackState(Enum):
    """Where a detection stands with the stream's tracker (server/analytics/)."""

    # Tracking is off, or the tracker did not keep this detection.
    UNTRACKED = "untracked"
    # A candidate track not yet seen `min_hits` times: no id yet.
    NEW = "new"
    # A confirmed track with a stable id.
    TRACKED = "tracked"


@dataclass(frozen=True)
class Keypoint:
    x: float
    y: float
    score: float = 0.0
    name: str = ""


@dataclass(frozen=True)
class Detection:
    # Axis-aligned box in source-frame pixels; x_max/y_max exclusive edges.
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    score: float
    class_id: int = 0
    label: str = ""
    text: str = ""
    # Quadrilateral (clockwise from top-left) for rotated objects such as text lines, else ().
    polygon: tuple[tuple[float, float], ...] = ()
    keypoints: tuple[Keypoint, ...] = ()
    children: tuple[Detection, ...] = ()
    # Set by the stream's tracker when analytics are on; 0 = no id.
    track_id: int = 0
    track_state: TrackState = TrackState.UNTRACKED

    @property
    def area(self) -> float:
        return max(0.0, self.x_max - self.x_min) * max(0.0, self.y_max - self.y_min)


@dataclass(frozen=True)
class Region:
    """A region of interest in source pixels."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True)
class DetectionFilter:
    """Per-stream choices: 0 / empty leave the model's own defaults."""

    score_threshold: float = 0.0
    max_detections: int = 0
    class_ids: frozenset[int] = frozenset()
    roi: Region | None = None

    def apply(self, detections: list[Detection]) -> list[Detection]:
        kept = [
            item
            for item in detections
            if item.score >= self.score_threshold
            and (not self.class_ids or item.class_id in self.class_ids)
        ]
        if not self.max_detections or len(kept) <= self.max_detections:
            return kept
        # The best `max_detections`, in the order the model gave them (text: reading order).
        best = sorted(range(len(kept)), key=lambda index: kept[index].score, reverse=True)
        return [kept[index] for index in sorted(best[: self.max_detections])]


@dataclass(frozen=True)
class FrameTransform:
    """Model pixel (x, y) -> source pixel ((x - pad_left) / scale_x + offset_x, ...)."""

    scale_x: float = 1.0
    scale_y: float = 1.0
    pad_left: float = 0.0
    pad_top: float = 0.0
    # Where the image the model saw (a region of interest) starts in the source frame.
    offset_x: float = 0.0
    offset_y: float = 0.0
    # The size of the image the model saw, to clip boxes to it.
    source_width: int = 0
    source_height: int = 0

    def to_source(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map model-pixel coordinates to source pixels, clipped to the image the model saw."""
        sx = (xs - self.pad_left) / self.scale_x
        sy = (ys - self.pad_top) / self.scale_y
        if self.source_width:
            sx = np.clip(sx, 0, self.source_width)
        if self.source_height:
            sy = np.clip(sy, 0, self.source_height)
        return sx + self.offset_x, sy + self.offset_y
