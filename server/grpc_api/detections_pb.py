"""Detections and per-stream detection options, protobuf <-> domain."""

from __future__ import annotations

import math
from collections.abc import Iterable

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from server.errors import InvalidInput
from server.vision.detections import Detection, DetectionFilter, Region, TrackState

_TRACK_STATES = {
    TrackState.UNTRACKED: fs.TRACK_STATE_UNSPECIFIED,
    TrackState.NEW: fs.TRACK_STATE_NEW,
    TrackState.TRACKED: fs.TRACK_STATE_TRACKED,
}


def detection_filter_from_pb(results: fs.ResultOptions) -> DetectionFilter:
    threshold = results.score_threshold
    if not math.isfinite(threshold) or not 0 <= threshold <= 1:
        raise InvalidInput(f"results.score_threshold {threshold} must lie in [0, 1]")
    roi = None
    if results.HasField("region_of_interest"):
        box = results.region_of_interest
        values = (box.x_min, box.y_min, box.x_max, box.y_max)
        if not all(math.isfinite(value) and value >= 0 for value in values):
            raise InvalidInput("results.region_of_interest needs finite, non-negative pixels")
        if box.x_max <= box.x_min or box.y_max <= box.y_min:
            raise InvalidInput(
                f"results.region_of_interest ({box.x_min:g}, {box.y_min:g}, {box.x_max:g}, "
                f"{box.y_max:g}) is empty: x_max and y_max must exceed x_min and y_min"
            )
        roi = Region(*values)
    return DetectionFilter(
        score_threshold=threshold,
        max_detections=results.max_detections,
        class_ids=frozenset(results.class_ids),
        roi=roi,
    )


def detections_to_pb(detections: Iterable[Detection]) -> list[fs.Detection]:
    return [
        fs.Detection(
            x_min=item.x_min,
            y_min=item.y_min,
            x_max=item.x_max,
            y_max=item.y_max,
            score=item.score,
            class_id=item.class_id,
            label=item.label,
            text=item.text,
            children=detections_to_pb(item.children),
            keypoints=[
                fs.Keypoint(x=point.x, y=point.y, score=point.score, name=point.name)
                for point in item.keypoints
            ],
            polygon=[fs.Point(x=x, y=y) for x, y in item.polygon],
            track_id=item.track_id,
            track_state=_TRACK_STATES[item.track_state],
        )  # fmt: skip
        for item in detections
    ]
