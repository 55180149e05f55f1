"""Geometry, zones, lines, masks, thresholds and events of one stream, without a server."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest

from server.analytics.config import check_config
from server.analytics.geometry import (
    PolygonSet,
    anchors,
    inside_polygon,
    iou_matrix,
    segments_cross,
    side,
)
from server.analytics.stream import FrameInfo, StreamAnalytics
from server.analytics.types import (
    AnalyticsConfig,
    Anchor,
    Direction,
    EventKind,
    FrameAnalytics,
    Line,
    Zone,
)
from server.errors import InvalidInput
from server.vision.detections import Detection

SQUARE = ((100.0, 100.0), (200.0, 100.0), (200.0, 200.0), (100.0, 200.0))


def test_iou_and_anchors():
    a = np.array([[0, 0, 10, 10], [0, 0, 20, 20]], dtype=np.float64)
    b = np.array([[5, 0, 15, 10]], dtype=np.float64)
    assert iou_matrix(a, b)[:, 0] == pytest.approx([50 / 150, 100 / 400])
    assert anchors(a, Anchor.BOTTOM_CENTER).tolist() == [[5, 10], [10, 20]]
    assert anchors(a, Anchor.CENTER).tolist() == [[5, 5], [10, 10]]


def test_inside_polygon_concave():
    # An L shape: the notch (top right) is outside.
    shape = np.array([(0, 0), (10, 0), (10, 4), (4, 4), (4, 10), (0, 10)], dtype=np.float64)
    points = np.array([(2, 2), (8, 2), (2, 8), (8, 8), (-1, 5), (11, 2)], dtype=np.float64)
    assert inside_polygon(points, shape).tolist() == [True, True, True, False, False, False]


def test_polygon_set_agrees_with_each_polygon_alone():
    rng = np.random.default_rng(3)
    polygons = [
        np.array(SQUARE),
        np.array([(0, 0), (300, 50), (150, 250)], dtype=np.float64),
        np.array([(50, 50), (250, 60), (260, 200), (180, 120), (40, 210)], dtype=np.float64),
    ]
    points = rng.uniform(0, 300, size=(200, 2))
    together = PolygonSet(polygons).contains(points)
    alone = np.stack([inside_polygon(points, polygon) for polygon in polygons], axis=1)
    assert together.shape == (200, 3) and (together == alone).all() and alone.any(axis=0).all()


def test_side_and_crossing():
    start, end = (0.0, 0.0), (10.0, 0.0)
    assert side(start, end, (5.0, 3.0)) == 1  # below a rightward line: its right, in image
    assert side(start, end, (5.0, -3.0)) == -1
    assert segments_cross((5.0, -3.0), (5.0, 3.0), start, end)
    assert not segments_cross((15.0, -3.0), (15.0, 3.0), start, end)  # past the segment's end


def det(cx: float, bottom: float, score: float = 0.9, class_id: int = 0, label: str = "face"):
    return Detection(cx - 20, bottom - 40, cx + 20, bottom, score, class_id=class_id, label=label)


Steps = list[tuple[float, list[Detection]]]


def run(analytics: StreamAnalytics, steps: Steps) -> list[FrameAnalytics]:
    return [
        analytics.update(t, detections, FrameInfo("cam", "m", "1", i, int(t * 1e9)), (400, 300))
        for i, (t, detections) in enumerate(steps)
    ]


def kinds(outcomes: list[FrameAnalytics]) -> list[tuple[str, str, str]]:
    return [(e.kind.value, e.name, e.direction.value) for o in outcomes for e in o.events]


def test_zone_enter_leave_line_cross_and_disappear():
    config = AnalyticsConfig(
        min_hits=2,
        lost_s=0.5,
        zones=(Zone("door", SQUARE),),
        lines=(Line("gate", (250.0, 0.0), (250.0, 300.0)),),
    )
    analytics = StreamAnalytics(check_config(config))
    # Anchors x = 52, 67, ... 112 (frame 4: in the zone), ... 187, 202 (frame 10: out), ...
    # 247, 262 (frame 14: across the line), ... 337; then nothing.
    path = [(i * 0.1, [det(52 + 15 * i, 150)]) for i in range(20)]
    outcomes = run(analytics, [*path, (2.1, []), (2.7, [])])
    crossing = [e for o in outcomes for e in o.events if e.kind is EventKind.LINE_CROSS]
    assert len(crossing) == 1
    # start (250, 0) -> end (250, 300) points down; seen in the image, its right-hand side
    # is the left (x < 250). Moving left to right is therefore from its right to its left: OUT.
    assert crossing[0].direction is Direction.OUT
    assert kinds(outcomes) == [
        ("appear", "", "none"),
        ("zone_enter", "door", "none"),
        ("zone_leave", "door", "none"),
        ("line_cross", "gate", "out"),
        ("disappear", "", "none"),
    ]
    assert [bool(o.zones[0].track_ids) for o in outcomes[:12]] == [False] * 4 + [True] * 6 + [
        False
    ] * 2
    assert [(e.sequence, e.kind) for o in outcomes for e in o.events if e.name] == [
        (4, EventKind.ZONE_ENTER),
        (10, EventKind.ZONE_LEAVE),
        (14, EventKind.LINE_CROSS),
    ]
    assert outcomes[13].lines[0].out_count == 0
    assert outcomes[14].lines[0].out_count == 1 and outcomes[-1].lines[0].in_count == 0
    assert {d.track_id for o in outcomes for d in o.detections} == {0, 1}
    assert {e.stream_id for o in outcomes for e in o.events} == {"cam"}


def test_crossing_counted_across_skipped_frames_and_in_direction():
    config = AnalyticsConfig(min_hits=1, lines=(Line("gate", (250.0, 300.0), (250.0, 0.0)),))
    analytics = StreamAnalytics(config)
    # 150 px/s; one step skips two frames, from x = 230 to x = 275 (no overlap with where it
    # was): the prediction keeps the track, and the movement segment crosses the line.
    steps = [(0.0, [det(200, 150)]), (0.1, [det(215, 150)]), (0.2, [det(230, 150)])]
    outcomes = run(analytics, [*steps, (0.5, [det(275, 150)])])
    assert {d.track_id for o in outcomes for d in o.detections} == {1}
    assert outcomes[-1].lines[0].in_count == 1
    assert kinds(outcomes)[-1] == ("line_cross", "gate", "in")


def test_masks_and_class_thresholds_drop_before_tracking():
    config = AnalyticsConfig(
        min_hits=1,
        masks=(Zone("", SQUARE),),
        class_thresholds=MappingProxyType({"face": 0.8, "3": 0.5}),
    )
    analytics = StreamAnalytics(config)
    outcome = run(
        analytics,
        [(0.0, [det(150, 150), det(300, 150, score=0.7), det(50, 80, 0.6, 3, "")])],
    )[0]
    # The masked face and the weak face are gone; class 3 (no label) passes its threshold.
    assert [(d.class_id, d.track_id != 0) for d in outcome.detections] == [(3, True)]


def test_normalized_points_follow_the_frame_size():
    config = AnalyticsConfig(
        min_hits=1,
        normalized=True,
        zones=(Zone("half", ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0))),),
    )
    analytics = StreamAnalytics(check_config(config))
    info = FrameInfo("cam", "m", "1", 0, 0)
    # 400 px wide: x = 150 lies in the left half.
    assert analytics.update(0.0, [det(150, 100)], info, (400, 300)).zones[0].track_ids == (1,)
    # The camera now sends 200 px frames: the same pixel is in the right half.
    assert analytics.update(0.1, [det(151, 100)], info, (200, 150)).zones[0].track_ids == ()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (AnalyticsConfig(zones=(Zone("z", SQUARE[:2]),)), "has 2 points; a polygon needs 3"),
        (AnalyticsConfig(zones=(Zone("z", ((0, 0), (1, 1), (2, 2))),)), "enclose no area"),
        (AnalyticsConfig(zones=(Zone("z", ((math.nan, 0), *SQUARE[1:])),)), "is not finite"),
        (AnalyticsConfig(zones=(Zone("", SQUARE),)), "analytics.zones[0] needs a name"),
        (AnalyticsConfig(zones=(Zone("a", SQUARE), Zone("a", SQUARE))), "used twice"),
        (AnalyticsConfig(zones=(Zone("z", SQUARE * 65),)), "260 points, at most 256"),
        (AnalyticsConfig(zones=tuple(Zone(f"z{i}", SQUARE) for i in range(65))), "at most 64"),
        (AnalyticsConfig(lines=(Line("l", (1, 1), (1, 1)),)), "the same point"),
        (AnalyticsConfig(lines=(Line("l", (0, 0), (math.inf, 1)),)), "is not finite"),
        (AnalyticsConfig(normalized=True, zones=(Zone("z", SQUARE),)), "must lie in [0, 1]"),
        (AnalyticsConfig(class_thresholds=MappingProxyType({"face": 2.0})), "'face'] 2.0"),
        (AnalyticsConfig(low_score=0.6, high_score=0.5), "exceeds high_score"),
        (AnalyticsConfig(lost_s=math.nan), "lost_seconds nan"),
    ],
)
def test_bad_options_are_refused_by_name(config: AnalyticsConfig, message: str):
    with pytest.raises(InvalidInput) as error:
        check_config(config)
    assert message in str(error.value)
