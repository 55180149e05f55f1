"""Stream analytics, protobuf <-> domain: the options at stream open, the zones' and lines'
state per frame, and the events. The core checks the options (server/analytics/config.py)."""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from server.analytics.config import MAX_LINES, MAX_MASKS, MAX_POINTS, MAX_ZONES
from server.analytics.types import (
    AnalyticsConfig,
    AnalyticsEvent,
    Anchor,
    Direction,
    EventKind,
    Line,
    LineCount,
    Point,
    Zone,
    ZoneOccupancy,
)
from server.errors import InvalidInput

_ANCHORS = {
    fs.ANCHOR_POINT_UNSPECIFIED: Anchor.BOTTOM_CENTER,
    fs.ANCHOR_POINT_BOTTOM_CENTER: Anchor.BOTTOM_CENTER,
    fs.ANCHOR_POINT_CENTER: Anchor.CENTER,
}
_KINDS_TO_PB = {
    EventKind.APPEAR: fs.ANALYTICS_EVENT_KIND_APPEAR,
    EventKind.DISAPPEAR: fs.ANALYTICS_EVENT_KIND_DISAPPEAR,
    EventKind.ZONE_ENTER: fs.ANALYTICS_EVENT_KIND_ZONE_ENTER,
    EventKind.ZONE_LEAVE: fs.ANALYTICS_EVENT_KIND_ZONE_LEAVE,
    EventKind.LINE_CROSS: fs.ANALYTICS_EVENT_KIND_LINE_CROSS,
}
_DIRECTIONS_TO_PB = {
    Direction.NONE: fs.CROSSING_DIRECTION_UNSPECIFIED,
    Direction.IN: fs.CROSSING_DIRECTION_IN,
    Direction.OUT: fs.CROSSING_DIRECTION_OUT,
}
_DEFAULTS = AnalyticsConfig()


def analytics_config_from_pb(options: fs.AnalyticsOptions) -> AnalyticsConfig:
    """Zero fields take the defaults. Counts are bounded here, before anything is copied."""
    if options.anchor not in _ANCHORS:
        raise InvalidInput(f"analytics.anchor {options.anchor} is not a known anchor point")
    for kind, given, limit in (
        ("zones", options.zones, MAX_ZONES),
        ("lines", options.lines, MAX_LINES),
        ("masks", options.masks, MAX_MASKS),
    ):
        if len(given) > limit:
            raise InvalidInput(f"analytics.{kind}: {len(given)} given, at most {limit}")
    lines = []
    for index, line in enumerate(options.lines):
        if len(line.points) != 2:
            raise InvalidInput(
                f"analytics.lines[{index}] ({line.name[:128]!r}) needs exactly 2 points "
                f"(start, end), got {len(line.points)}"
            )
        start, end = line.points
        lines.append(Line(line.name, (start.x, start.y), (end.x, end.y)))
    return AnalyticsConfig(
        high_score=options.high_score or _DEFAULTS.high_score,
        low_score=options.low_score or _DEFAULTS.low_score,
        match_iou=options.match_iou or _DEFAULTS.match_iou,
        min_hits=options.min_hits or _DEFAULTS.min_hits,
        lost_s=options.lost_seconds or _DEFAULTS.lost_s,
        zones=_polygons("zones", options.zones),
        lines=tuple(lines),
        masks=_polygons("masks", options.masks),
        class_thresholds=MappingProxyType(dict(options.class_score_thresholds)),
        anchor=_ANCHORS[options.anchor],
        normalized=options.normalized,
    )


def _polygons(kind: str, polygons: Iterable[fs.Polygon]) -> tuple[Zone, ...]:
    result = []
    for index, polygon in enumerate(polygons):
        if len(polygon.points) > MAX_POINTS:
            raise InvalidInput(
                f"analytics.{kind}[{index}] has {len(polygon.points)} points, at most {MAX_POINTS}"
            )
        points: tuple[Point, ...] = tuple((point.x, point.y) for point in polygon.points)
        result.append(Zone(polygon.name, points))
    return tuple(result)


def zones_to_pb(zones: Iterable[ZoneOccupancy]) -> list[fs.ZoneOccupancy]:
    return [fs.ZoneOccupancy(name=zone.name, track_ids=zone.track_ids) for zone in zones]


def lines_to_pb(lines: Iterable[LineCount]) -> list[fs.LineCount]:
    return [
        fs.LineCount(name=line.name, in_count=line.in_count, out_count=line.out_count)
        for line in lines
    ]


def events_to_pb(events: Iterable[AnalyticsEvent]) -> fs.AnalyticsEvents:
    return fs.AnalyticsEvents(
        events=[
            fs.AnalyticsEvent(
                kind=_KINDS_TO_PB[event.kind],
                stream_id=event.stream_id,
                model_name=event.model_name,
                model_version=event.model_version,
                track_id=event.track_id,
                class_id=event.detection.class_id,
                label=event.detection.label,
                sequence=event.sequence,
                capture_time_unix_ns=event.capture_time_ns,
                box=fs.Region(
                    x_min=event.detection.x_min,
                    y_min=event.detection.y_min,
                    x_max=event.detection.x_max,
                    y_max=event.detection.y_max,
                ),
                score=event.detection.score,
                name=event.name,
                direction=_DIRECTIONS_TO_PB[event.direction],
            )
            for event in events
        ]
    )
