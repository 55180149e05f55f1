"""One stream's analytics: masks and per-class thresholds, then the tracker, then zones, lines
and events, frame after frame.

Zones and lines are judged on confirmed tracks only, at each track's anchor point where it was
last seen: a track that misses a few frames keeps its place in its zones until it is removed
(then it leaves them and disappears). A line is crossed when a track's anchor moves from one
side to the other across the segment itself, however many frames were skipped in between.

When the stream ends (`end`), every live track leaves its zones and disappears at once, with
the last frame analysed, so a consumer counting who is inside is never left with ghosts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from server.analytics.geometry import Array, PolygonSet, anchors, segments_cross, sides
from server.analytics.tracker import Track, Tracker
from server.analytics.types import (
    AnalyticsConfig,
    AnalyticsEvent,
    Direction,
    EventKind,
    FrameAnalytics,
    Line,
    LineCount,
    Point,
    ZoneOccupancy,
)
from server.vision.detections import Detection

_NOWHERE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FrameInfo:
    """What the events of a frame carry besides the track."""

    stream_id: str
    model_name: str
    model_version: str
    sequence: int
    capture_time_ns: int


@dataclass
class _LineState:
    in_count: int = 0
    out_count: int = 0


@dataclass
class _TrackPlace:
    """Where a track stood for zones and lines."""

    zones: frozenset[str]
    # Per line: the last side it was seen on (not on the line) and the anchor there.
    sides: dict[str, tuple[int, Point]]


class StreamAnalytics:
    def __init__(self, config: AnalyticsConfig) -> None:
        self.config = config
        self._tracker = Tracker(config)
        self._lines = {line.name: _LineState() for line in config.lines}
        self._places: dict[int, _TrackPlace] = {}  # by Track.key
        self._size: tuple[int, int] | None = None
        self._zones = PolygonSet([])
        self._masks = PolygonSet([])
        self._line_points: list[tuple[Line, Point, Point]] = []
        self._line_starts: Array = np.zeros((0, 2))
        self._line_ends: Array = np.zeros((0, 2))
        # The newest frame analysed: the events of the stream's end carry it.
        self._last_frame: FrameInfo | None = None
        if not config.normalized:
            self._resolve(1, 1)

    @property
    def needs_frame_size(self) -> bool:
        """Points are fractions of the frame: the caller must give each frame's size."""
        return self.config.normalized

    def update(
        self, time_s: float, detections: list[Detection], frame: FrameInfo, size: tuple[int, int]
    ) -> FrameAnalytics:
        """`time_s`: the frame's capture time in seconds; `size`: its width and height (used
        only with normalized points)."""
        if self.config.normalized and size != self._size:
            self._resolve(*size)
        kept = self._filter(detections)
        step = self._tracker.update(time_s, kept)
        if self._last_frame is None or frame.capture_time_ns >= self._last_frame.capture_time_ns:
            self._last_frame = frame
        events: list[AnalyticsEvent] = []

        def event(
            kind: EventKind, track: Track, name: str = "", direction: Direction = Direction.NONE
        ) -> None:
            events.append(_event(kind, frame, track, name, direction))

        for track in step.confirmed:
            event(EventKind.APPEAR, track)
        seen = [track for track in step.tracks if track is not None]
        points = anchors(_boxes([t.detection for t in seen]), self.config.anchor)
        # Every test for every track at once, then plain Python lists per track.
        zone_names = [zone.name for zone in self.config.zones]
        inside_rows = self._zones.contains(points).tolist()
        side_rows = sides(self._line_starts, self._line_ends, points).tolist()
        anchor_rows = points.tolist()
        for row, track in enumerate(seen):
            place = self._places.get(track.key)
            if place is None:
                place = self._places[track.key] = _TrackPlace(frozenset(), {})
            if track.confirmed and zone_names:
                hits = inside_rows[row]
                zones = (
                    frozenset(name for name, hit in zip(zone_names, hits, strict=True) if hit)
                    if True in hits
                    else _NOWHERE
                )
                if zones != place.zones:
                    for name in zone_names:
                        if name in zones and name not in place.zones:
                            event(EventKind.ZONE_ENTER, track, name)
                        elif name in place.zones and name not in zones:
                            event(EventKind.ZONE_LEAVE, track, name)
                    place.zones = zones
            anchor = (anchor_rows[row][0], anchor_rows[row][1])
            for (line, start, end), now in zip(self._line_points, side_rows[row], strict=True):
                if now == 0:
                    continue  # on the line: wait to see which side it goes to
                before = place.sides.get(line.name)
                place.sides[line.name] = (now, anchor)
                if before is None or before[0] == now or not track.confirmed:
                    continue
                if segments_cross(before[1], anchor, start, end):
                    state = self._lines[line.name]
                    if now > 0:
                        state.in_count += 1
                        event(EventKind.LINE_CROSS, track, line.name, Direction.IN)
                    else:
                        state.out_count += 1
                        event(EventKind.LINE_CROSS, track, line.name, Direction.OUT)
        for track in step.removed:
            events.extend(self._removed(track, frame))
        live = {track.key for track in self._tracker.tracks}
        for key in [key for key in self._places if key not in live]:
            del self._places[key]  # candidates dropped by the tracker
        return FrameAnalytics(
            detections=step.detections,
            zones=self._occupancy(),
            lines=tuple(
                LineCount(name, state.in_count, state.out_count)
                for name, state in self._lines.items()
            ),
            events=tuple(events),
        )

    def end(self) -> tuple[AnalyticsEvent, ...]:
        """The stream ends: each live track leaves the zones it is in and disappears, stamped
        with the newest frame analysed (its sequence and capture time; the track's box where it
        was last seen). Line counts stay as they are."""
        frame = self._last_frame
        removed = self._tracker.end()
        events = [event for track in removed if frame for event in self._removed(track, frame)]
        self._places.clear()
        return tuple(events)

    def _removed(self, track: Track, frame: FrameInfo) -> list[AnalyticsEvent]:
        """A track is gone: it leaves its zones, then disappears."""
        events: list[AnalyticsEvent] = []
        place = self._places.pop(track.key, None)
        if place is not None:
            for name in (zone.name for zone in self.config.zones):
                if name in place.zones:
                    events.append(_event(EventKind.ZONE_LEAVE, frame, track, name))
        events.append(_event(EventKind.DISAPPEAR, frame, track))
        return events

    def _occupancy(self) -> tuple[ZoneOccupancy, ...]:
        if not self.config.zones:
            return ()
        inside: dict[str, list[int]] = {zone.name: [] for zone in self.config.zones}
        for track in self._tracker.tracks:
            place = self._places.get(track.key)
            if track.confirmed and place is not None:
                for name in place.zones:
                    inside[name].append(track.track_id)
        return tuple(ZoneOccupancy(name, tuple(sorted(ids))) for name, ids in inside.items())

    def _filter(self, detections: list[Detection]) -> list[Detection]:
        """Drop detections under their class's threshold and those anchored in a mask."""
        thresholds = self.config.class_thresholds
        if thresholds:
            detections = [d for d in detections if d.score >= _threshold(thresholds, d)]
        if self._masks.count and detections:
            points = anchors(_boxes(detections), self.config.anchor)
            masked = np.count_nonzero(self._masks.contains(points), axis=1) > 0
            detections = [d for index, d in enumerate(detections) if not masked[index]]
        return detections

    def _resolve(self, width: int, height: int) -> None:
        """Zones, masks and lines in this frame's pixels."""
        self._size = (width, height)
        scale = np.array([width, height], dtype=np.float64)
        self._zones = PolygonSet(
            [np.array(zone.points, dtype=np.float64) * scale for zone in self.config.zones]
        )
        self._masks = PolygonSet(
            [np.array(mask.points, dtype=np.float64) * scale for mask in self.config.masks]
        )
        self._line_points = [
            (
                line,
                (line.start[0] * width, line.start[1] * height),
                (line.end[0] * width, line.end[1] * height),
            )
            for line in self.config.lines
        ]
        self._line_starts = np.array([p[1] for p in self._line_points]).reshape(-1, 2)
        self._line_ends = np.array([p[2] for p in self._line_points]).reshape(-1, 2)


def _threshold(thresholds: Mapping[str, float], detection: Detection) -> float:
    """The detection's label's threshold, else its class id's, else none (0)."""
    by_label = thresholds.get(detection.label) if detection.label else None
    if by_label is not None:
        return by_label
    return thresholds.get(str(detection.class_id), 0.0)


def _boxes(detections: Sequence[Detection]) -> Array:
    if not detections:
        return np.zeros((0, 4))
    return np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in detections], dtype=np.float64)


def _event(
    kind: EventKind,
    frame: FrameInfo,
    track: Track,
    name: str = "",
    direction: Direction = Direction.NONE,
) -> AnalyticsEvent:
    return AnalyticsEvent(
        kind, frame.stream_id, frame.model_name, frame.model_version, track.track_id,
        frame.sequence, frame.capture_time_ns, track.detection, name, direction,
    )  # fmt: skip
