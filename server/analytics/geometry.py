"""Plane geometry on numpy arrays: box overlaps, anchor points, point-in-polygon and which side
of a line a point lies on. Image coordinates: x right, y down."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from server.analytics.types import Anchor, Point

Array = npt.NDArray[np.float64]


def iou_matrix(boxes_a: Array, boxes_b: Array) -> Array:
    """IoU of every box of `boxes_a` (N x 4: x_min, y_min, x_max, y_max) with every box of
    `boxes_b` (M x 4): N x M."""
    if not len(boxes_a) or not len(boxes_b):
        return np.zeros((len(boxes_a), len(boxes_b)))
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    overlap = width * height
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a[:, None] + area_b[None, :] - overlap
    result: Array = np.where(union > 0, overlap / np.where(union > 0, union, 1), 0.0)
    return result


def anchors(boxes: Array, anchor: Anchor) -> Array:
    """The anchor point of each box (N x 4) -> N x 2."""
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = boxes[:, 3] if anchor is Anchor.BOTTOM_CENTER else (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([x, y], axis=1) if len(boxes) else np.zeros((0, 2))


class PolygonTest:
    """Point-in-polygon for many points at once: the edges are prepared once per polygon."""

    def __init__(self, polygon: Array) -> None:
        self._x1, self._y1 = polygon[:, 0], polygon[:, 1]
        self._x2 = np.concatenate((self._x1[1:], self._x1[:1]))
        self._y2 = np.concatenate((self._y1[1:], self._y1[:1]))

    def contains(self, points: Array) -> npt.NDArray[np.bool_]:
        """Whether each point (N x 2) lies inside, by counting the edges a ray to the right
        crosses (even-odd rule; a point exactly on an edge may go either way)."""
        if not len(points):
            return np.zeros(0, dtype=bool)
        x = points[:, 0:1]
        y = points[:, 1:2]
        spans = (self._y1 > y) != (self._y2 > y)
        # Where an edge is horizontal `spans` is False, so the division's value is never used.
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing_x = self._x1 + (y - self._y1) * (self._x2 - self._x1) / (self._y2 - self._y1)
        inside: npt.NDArray[np.bool_] = (
            np.count_nonzero(spans & (x < crossing_x), axis=1) % 2
        ) == 1
        return inside


def inside_polygon(points: Array, polygon: Array) -> npt.NDArray[np.bool_]:
    """Whether each point (N x 2) lies inside `polygon` (M x 2, M >= 3)."""
    return PolygonTest(polygon).contains(points)


class PolygonSet:
    """Point-in-polygon for many points and many polygons in one pass: every polygon's edges
    in one array, so a frame costs a dozen numpy calls whatever the number of zones."""

    def __init__(self, polygons: list[Array]) -> None:
        self.count = len(polygons)
        if not polygons:
            return
        self._x1 = np.concatenate([polygon[:, 0] for polygon in polygons])
        self._y1 = np.concatenate([polygon[:, 1] for polygon in polygons])
        self._x2 = np.concatenate([np.roll(polygon[:, 0], -1) for polygon in polygons])
        self._y2 = np.concatenate([np.roll(polygon[:, 1], -1) for polygon in polygons])
        self._starts = np.cumsum([0] + [len(polygon) for polygon in polygons[:-1]])

    def contains(self, points: Array) -> npt.NDArray[np.bool_]:
        """N x count: whether each point lies inside each polygon (even-odd rule)."""
        if not len(points) or not self.count:
            return np.zeros((len(points), self.count), dtype=bool)
        x = points[:, 0:1]
        y = points[:, 1:2]
        spans = (self._y1 > y) != (self._y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing_x = self._x1 + (y - self._y1) * (self._x2 - self._x1) / (self._y2 - self._y1)
        crossed = (spans & (x < crossing_x)).astype(np.int32)
        inside: npt.NDArray[np.bool_] = np.add.reduceat(crossed, self._starts, axis=1) % 2 == 1
        return inside


def sides(starts: Array, ends: Array, points: Array) -> npt.NDArray[np.int64]:
    """N x L: `side` of each point (N x 2) for each line (starts, ends: L x 2): 1, -1 or 0."""
    direction = ends - starts
    values = direction[None, :, 0] * (points[:, None, 1] - starts[None, :, 1]) - direction[
        None, :, 1
    ] * (points[:, None, 0] - starts[None, :, 0])
    result: npt.NDArray[np.int64] = np.sign(values).astype(np.int64)
    return result


def polygon_area(points: tuple[Point, ...]) -> float:
    """Unsigned area (shoelace formula)."""
    xs = np.array([p[0] for p in points], dtype=np.float64)
    ys = np.array([p[1] for p in points], dtype=np.float64)
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def cross(start: Point, end: Point, point: Point) -> float:
    """(end - start) x (point - start): > 0 when `point` lies to the right of start->end as
    seen in the image (y down), < 0 to its left, 0 on the line."""
    return (end[0] - start[0]) * (point[1] - start[1]) - (end[1] - start[1]) * (point[0] - start[0])


def side(start: Point, end: Point, point: Point) -> int:
    value = cross(start, end, point)
    return 1 if value > 0 else -1 if value < 0 else 0


def segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Whether segment a-b meets segment c-d (touching counts)."""
    d1, d2 = cross(c, d, a), cross(c, d, b)
    d3, d4 = cross(a, b, c), cross(a, b, d)
    return d1 * d2 <= 0 and d3 * d4 <= 0
