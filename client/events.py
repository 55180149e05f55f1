"""What a camera reports beyond its frames: the server's analytics events (a track appeared,
entered a zone, crossed a line, ...) and the client's own camera down/up, as value types and as
the JSON document every sink (MQTT, webhooks) delivers.

Also the analytics options a camera opens its stream with (zones, lines, masks, thresholds):
plain values here, converted to protobuf by client/stream.py only; and where and how long its
event clips are (client/clips.py records them).
"""

from __future__ import annotations

import datetime
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

Point = tuple[float, float]


class Anchor(StrEnum):
    """Where a detection is when tested against zones, lines and masks."""

    BOTTOM_CENTER = "bottom_center"
    CENTER = "center"


@dataclass(frozen=True)
class AnalyticsSettings:
    """AnalyticsOptions of one stream; zero values take the server's defaults."""

    # name -> polygon (3+ points) / line (start, end), in source pixels or fractions.
    zones: tuple[tuple[str, tuple[Point, ...]], ...] = ()
    lines: tuple[tuple[str, tuple[Point, Point]], ...] = ()
    masks: tuple[tuple[Point, ...], ...] = ()
    # Class id ("0") or label ("face") -> least score.
    class_thresholds: tuple[tuple[str, float], ...] = ()
    anchor: Anchor = Anchor.BOTTOM_CENTER
    normalized: bool = False
    high_score: float = 0.0
    low_score: float = 0.0
    match_iou: float = 0.0
    min_hits: int = 0
    lost_seconds: float = 0.0


class EventKind(StrEnum):
    APPEAR = "appear"
    DISAPPEAR = "disappear"
    ZONE_ENTER = "zone_enter"
    ZONE_LEAVE = "zone_leave"
    LINE_CROSS = "line_cross"
    # From the client's own reconnect logic, not the server.
    CAMERA_DOWN = "camera_down"
    CAMERA_UP = "camera_up"


# Event kinds a clip can be recorded for: the server's analytics events.
CLIP_EVENT_KINDS = frozenset(
    {
        EventKind.APPEAR,
        EventKind.DISAPPEAR,
        EventKind.ZONE_ENTER,
        EventKind.ZONE_LEAVE,
        EventKind.LINE_CROSS,
    }
)
DEFAULT_BEFORE_S = 2.0
DEFAULT_AFTER_S = 3.0
# Ring plus frames waiting for the writer, per camera: 2 s of 1080p at 30 fps is ~370 MB, so a
# big camera keeps less than `before_s` rather than exhausting an edge box's memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
CLIP_SUFFIX = ".avi"


@dataclass(frozen=True)
class ClipSettings:
    """Where and how long a camera's event clips are (client/clips.py records them)."""

    directory: Path
    before_s: float = DEFAULT_BEFORE_S
    after_s: float = DEFAULT_AFTER_S
    # Only these kinds start or extend a clip; empty: every analytics event.
    events: frozenset[EventKind] = frozenset()
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class AnalyticsEvent:
    """One AnalyticsEvent of the stream (box in source-frame pixels)."""

    kind: EventKind
    stream_id: str
    model_name: str
    model_version: str
    track_id: int
    class_id: int
    label: str
    sequence: int
    capture_time_unix_ns: int
    box: tuple[float, float, float, float]
    score: float
    # The zone or line; empty for appear and disappear.
    name: str = ""
    # "in" or "out" for a line crossing, else empty.
    direction: str = ""


@dataclass(frozen=True)
class CameraStatus:
    """The camera itself went down (dropped, or down at start) or came back."""

    kind: EventKind
    reason: str = ""
    time_unix_ns: int = field(default_factory=time.time_ns)


def _iso(unix_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(unix_ns / 1e9, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_document(camera: str, event: AnalyticsEvent | CameraStatus) -> dict[str, object]:
    """The JSON document sinks deliver: every field of the event, named for a reader."""
    common: dict[str, object] = {"id": uuid.uuid4().hex, "event": event.kind.value}
    if isinstance(event, CameraStatus):
        return {
            **common,
            "camera": camera,
            "time": _iso(event.time_unix_ns),
            "time_unix_ns": event.time_unix_ns,
            "reason": event.reason,
        }
    document: dict[str, object] = {
        **common,
        "camera": camera,
        "stream_id": event.stream_id,
        "model_name": event.model_name,
        "model_version": event.model_version,
        "track_id": event.track_id,
        "class_id": event.class_id,
        "label": event.label,
        "sequence": event.sequence,
        "time": _iso(event.capture_time_unix_ns),
        "capture_time_unix_ns": event.capture_time_unix_ns,
        "box": [round(value, 1) for value in event.box],
        "score": round(event.score, 4),
    }
    if event.kind in (EventKind.ZONE_ENTER, EventKind.ZONE_LEAVE):
        document["zone"] = event.name
    elif event.kind is EventKind.LINE_CROSS:
        document["line"] = event.name
        document["direction"] = event.direction
    return document
