"""Checks a stream's analytics options when it opens: a bad zone is refused with a message that
names it, before any frame runs. Bounds keep one stream's per-frame work and memory small."""

from __future__ import annotations

import math

from server.analytics.geometry import polygon_area
from server.analytics.types import AnalyticsConfig, Point, Zone
from server.errors import InvalidInput

MAX_ZONES = 64
MAX_LINES = 64
MAX_MASKS = 64
MAX_POINTS = 256
MAX_CLASS_THRESHOLDS = 1024
MAX_NAME = 128
MAX_MIN_HITS = 1000
MAX_LOST_S = 3600.0
# Pixel coordinates beyond this are no camera's (and would lose precision as float32).
MAX_PIXEL = 1_000_000.0


def check_config(config: AnalyticsConfig) -> AnalyticsConfig:
    """`config` itself when it is usable; InvalidInput naming the first problem otherwise."""
    _check_unit("analytics.high_score", config.high_score)
    _check_unit("analytics.low_score", config.low_score)
    if config.low_score > config.high_score:
        raise InvalidInput(
            f"analytics.low_score {config.low_score:g} exceeds high_score {config.high_score:g}"
        )
    _check_unit("analytics.match_iou", config.match_iou)
    if config.match_iou <= 0:
        raise InvalidInput("analytics.match_iou must be above 0")
    if not 1 <= config.min_hits <= MAX_MIN_HITS:
        raise InvalidInput(f"analytics.min_hits {config.min_hits} must lie in [1, {MAX_MIN_HITS}]")
    if not math.isfinite(config.lost_s) or not 0 <= config.lost_s <= MAX_LOST_S:
        raise InvalidInput(
            f"analytics.lost_seconds {config.lost_s} must lie in [0, {MAX_LOST_S:g}]"
        )
    _check_polygons("zones", config.zones, MAX_ZONES, config.normalized, named=True)
    _check_polygons("masks", config.masks, MAX_MASKS, config.normalized, named=False)
    if len(config.lines) > MAX_LINES:
        raise InvalidInput(f"analytics.lines: {len(config.lines)} lines, at most {MAX_LINES}")
    names: set[str] = set()
    for index, line in enumerate(config.lines):
        where = f"analytics.lines[{index}]"
        _check_name(where, line.name, names)
        where = f"analytics.lines[{index}] ({line.name!r})"
        _check_points(where, (line.start, line.end), config.normalized)
        if line.start == line.end:
            raise InvalidInput(f"{where}: its 2 points are the same point")
    if len(config.class_thresholds) > MAX_CLASS_THRESHOLDS:
        raise InvalidInput(
            f"analytics.class_score_thresholds: {len(config.class_thresholds)} entries, "
            f"at most {MAX_CLASS_THRESHOLDS}"
        )
    for key, threshold in config.class_thresholds.items():
        if not key:
            raise InvalidInput("analytics.class_score_thresholds: a key is empty")
        _check_unit(f"analytics.class_score_thresholds[{key[:MAX_NAME]!r}]", threshold)
    return config


def _check_unit(where: str, value: float) -> None:
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise InvalidInput(f"{where} {value} must lie in [0, 1]")


def _check_name(where: str, name: str, seen: set[str]) -> None:
    if not name:
        raise InvalidInput(f"{where} needs a name")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"{where}: its name is longer than {MAX_NAME} characters")
    if name in seen:
        raise InvalidInput(f"{where}: the name {name!r} is used twice")
    seen.add(name)


def _check_polygons(
    kind: str, polygons: tuple[Zone, ...], limit: int, normalized: bool, named: bool
) -> None:
    if len(polygons) > limit:
        raise InvalidInput(f"analytics.{kind}: {len(polygons)} polygons, at most {limit}")
    names: set[str] = set()
    for index, polygon in enumerate(polygons):
        where = f"analytics.{kind}[{index}]"
        if named:
            _check_name(where, polygon.name, names)
        if polygon.name:
            where = f"{where} ({polygon.name[:MAX_NAME]!r})"
        if len(polygon.points) < 3:
            raise InvalidInput(f"{where} has {len(polygon.points)} points; a polygon needs 3")
        if len(polygon.points) > MAX_POINTS:
            raise InvalidInput(f"{where} has {len(polygon.points)} points, at most {MAX_POINTS}")
        _check_points(where, polygon.points, normalized)
        if polygon_area(polygon.points) <= 0:
            raise InvalidInput(f"{where}: its points enclose no area")


def _check_points(where: str, points: tuple[Point, ...], normalized: bool) -> None:
    for number, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidInput(f"{where} point {number} ({x}, {y}) is not finite")
        if normalized and not (0 <= x <= 1 and 0 <= y <= 1):
            raise InvalidInput(
                f"{where} point {number} ({x:g}, {y:g}) must lie in [0, 1] (normalized)"
            )
        if not normalized and max(abs(x), abs(y)) > MAX_PIXEL:
            raise InvalidInput(
                f"{where} point {number} ({x:g}, {y:g}) is beyond {MAX_PIXEL:g} pixels"
            )
