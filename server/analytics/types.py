"""Video-analytics value types, at the bottom of `server.analytics`: what a stream asks for
(tracking settings, zones, lines, masks, per-class thresholds) and what each frame gives back
(zone occupancy, line counts, events). Behaviour modules import these downward."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from server.vision.detections import Detection

Point = tuple[float, float]

# ---------------------------------------------------------------- what a stream asks for


class Anchor(Enum):
    # The middle of the box's bottom edge: where a person or a car stands on the ground.
    BOTTOM_CENTER = "bottom_center"
    CENTER = "center"


@dataclass(frozen=True)
class Zone:
    """A named polygon, in source pixels or in fractions of the frame (see `normalized`)."""

    name: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Line:
    """A named segment; crossing it from the left of start->end to its right (as seen in the
    image, y down) is IN."""

    name: str
    start: Point
    end: Point


@dataclass(frozen=True)
class AnalyticsConfig:
    """One stream's analytics; `server.analytics.config.check_config` refuses bad ones."""

    # Detections at or above `high_score` are associated first and may start tracks; those
    # between `low_score` and `high_score` only continue tracks already running (ByteTrack).
    high_score: float = 0.5
    low_score: float = 0.1
    # The least IoU between a track's predicted box and a detection for a match.
    match_iou: float = 0.3
    # A track gets its id (and events) after this many matched frames.
    min_hits: int = 2
    # A track unseen for this long (capture time) is removed.
    lost_s: float = 1.0
    zones: tuple[Zone, ...] = ()
    lines: tuple[Line, ...] = ()
    masks: tuple[Zone, ...] = ()
    # Least score per class, keyed by class id ("0") or label ("face").
    class_thresholds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    anchor: Anchor = Anchor.BOTTOM_CENTER
    # Points are fractions (0..1) of the frame's width and height, not pixels.
    normalized: bool = False


# ---------------------------------------------------------------- what a frame gives back


class EventKind(Enum):
    APPEAR = "appear"
    DISAPPEAR = "disappear"
    ZONE_ENTER = "zone_enter"
    ZONE_LEAVE = "zone_leave"
    LINE_CROSS = "line_cross"


class Direction(Enum):
    NONE = "none"
    # From the left of the line's start->end to its right, as seen in the image.
    IN = "in"
    OUT = "out"


@dataclass(frozen=True)
class AnalyticsEvent:
    kind: EventKind
    stream_id: str
    model_name: str
    model_version: str
    track_id: int
    sequence: int
    capture_time_ns: int
    # The track's detection in that frame (or where it was last seen, for removals).
    detection: Detection
    # The zone or line; empty for APPEAR and DISAPPEAR.
    name: str = ""
    direction: Direction = Direction.NONE


@dataclass(frozen=True)
class ZoneOccupancy:
    name: str
    track_ids: tuple[int, ...]


@dataclass(frozen=True)
class LineCount:
    name: str
    in_count: int
    out_count: int


@dataclass(frozen=True)
class FrameAnalytics:
    """A frame after analytics: its detections (filtered, with track ids), the zones' and
    lines' state after it, and the events it caused."""

    detections: list[Detection]
    zones: tuple[ZoneOccupancy, ...] = ()
    lines: tuple[LineCount, ...] = ()
    events: tuple[AnalyticsEvent, ...] = ()
