"""A ByteTrack-style multi-object tracker for one stream.

Each frame: tracks are moved to the frame's capture time by constant velocity, then matched by
IoU in two stages (detections at or above `high_score` with every track; then those between
`low_score` and `high_score` with the confirmed tracks still unmatched, at IoU >= 0.5, as
ByteTrack does), separately per class. Unmatched high-score detections start candidate tracks;
a candidate gets its id after `min_hits` matches and is dropped when it misses a frame; a
confirmed track that misses frames is kept `lost` until `lost_s` of capture time have passed.

Time, not frame counts: the scheduler drops frames under load, so two consecutive results can
be 40 ms or 400 ms apart. Velocities are pixels per second and predictions use the capture-time
gap, so a skipped frame is a longer step, not a missed match.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from server.analytics.assignment import match_by_iou
from server.analytics.geometry import Array, iou_matrix
from server.analytics.types import AnalyticsConfig
from server.vision.detections import Detection, TrackState

# ByteTrack's second stage: low-score boxes are doubtful, so they need a closer overlap.
LOW_SCORE_IOU = 0.5
# The velocity is an average of measurements over about this much capture time: a measurement
# over a gap dt counts 1 - exp(-dt / VELOCITY_TIME_S). By time, not per frame: a box's jitter
# (or a face half hidden, whose box shrinks) makes a measurement over one short frame gap very
# wrong, and the same smoothing must hold at 30 fps and with frames skipped.
VELOCITY_TIME_S = 0.5
# At most this many tracks per stream (candidates included); more detections stay untracked.
MAX_TRACKS = 1024


@dataclass(eq=False)
class Track:
    key: int  # internal, never reused within the stream; ids are given on confirmation
    detection: Detection  # the last detection matched
    seen_at: float  # its capture time, seconds
    hits: int = 1
    track_id: int = 0
    lost: bool = False
    # Pixels per second of the box's centre.
    velocity: tuple[float, float] = (0.0, 0.0)
    moved: bool = False  # velocity measured at least once

    @property
    def confirmed(self) -> bool:
        return self.track_id != 0

    def box_at(self, time_s: float) -> tuple[float, float, float, float]:
        d = self.detection
        dt = time_s - self.seen_at
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        return (d.x_min + dx, d.y_min + dy, d.x_max + dx, d.y_max + dy)

    def update(self, detection: Detection, time_s: float) -> None:
        dt = time_s - self.seen_at
        if dt > 0:
            old, new = _centre(self.detection), _centre(detection)
            measured = ((new[0] - old[0]) / dt, (new[1] - old[1]) / dt)
            gain = -math.expm1(-dt / VELOCITY_TIME_S) if self.moved else 1.0
            self.velocity = (
                self.velocity[0] + gain * (measured[0] - self.velocity[0]),
                self.velocity[1] + gain * (measured[1] - self.velocity[1]),
            )
            self.moved = True
        self.detection = detection
        self.seen_at = time_s
        self.hits += 1
        self.lost = False


def _tagged(detection: Detection, track_id: int, state: TrackState) -> Detection:
    """The detection with its track: a shallow copy of its fields with two of them set.
    dataclasses.replace re-runs __init__ field by field (30 us a detection, 1.5 ms a frame at
    50 tracks), copy.copy goes through __reduce_ex__ (4 us); this is 1 us."""
    tagged = object.__new__(Detection)
    fields = tagged.__dict__
    fields.update(detection.__dict__)
    fields["track_id"] = track_id
    fields["track_state"] = state
    return tagged


def _centre(d: Detection) -> tuple[float, float]:
    return ((d.x_min + d.x_max) / 2, (d.y_min + d.y_max) / 2)


@dataclass
class TrackerStep:
    """One frame through the tracker."""

    # The frame's detections in their order, with track ids and states set.
    detections: list[Detection]
    # The track of each detection, or None.
    tracks: list[Track | None]
    # Tracks confirmed at this frame (they got their id now).
    confirmed: list[Track] = field(default_factory=list)
    # Confirmed tracks removed at this frame (unseen for lost_s).
    removed: list[Track] = field(default_factory=list)


class Tracker:
    def __init__(self, config: AnalyticsConfig) -> None:
        self._config = config
        self._tracks: list[Track] = []
        self._keys = itertools.count(1)
        self._ids = itertools.count(1)
        self._last_time: float | None = None

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks)

    def end(self) -> list[Track]:
        """The stream ends: every confirmed track is removed (candidates are dropped), as if
        unseen for `lost_s`. Returns the removed tracks."""
        removed = [track for track in self._tracks if track.confirmed]
        self._tracks = []
        return removed

    def update(self, time_s: float, detections: list[Detection]) -> TrackerStep:
        """Track one frame captured at `time_s` (seconds). A frame older than the last one
        tracked (a result that overtook it) is returned untracked: tracks never go back."""
        if self._last_time is not None and time_s <= self._last_time:
            return TrackerStep(list(detections), [None] * len(detections))
        self._last_time = time_s
        config = self._config
        matched: dict[int, Track] = {}  # detection index -> track
        high = [i for i, d in enumerate(detections) if d.score >= config.high_score]
        low = [
            i for i, d in enumerate(detections) if config.low_score <= d.score < config.high_score
        ]
        candidates = list(self._tracks)
        for index, track in self._associate(time_s, detections, high, candidates, config.match_iou):
            matched[index] = track
        taken = set(map(id, matched.values()))
        running = [t for t in self._tracks if t.confirmed and not t.lost and id(t) not in taken]
        for index, track in self._associate(time_s, detections, low, running, LOW_SCORE_IOU):
            matched[index] = track
        step = TrackerStep([], [])
        for index, track in matched.items():
            track.update(detections[index], time_s)
            if not track.confirmed and track.hits >= config.min_hits:
                track.track_id = next(self._ids)
                step.confirmed.append(track)
        taken = set(map(id, matched.values()))
        kept: list[Track] = []
        for track in self._tracks:
            if id(track) in taken:
                kept.append(track)
            elif not track.confirmed:
                continue  # a candidate that missed a frame was noise
            elif time_s - track.seen_at > config.lost_s:
                step.removed.append(track)
            else:
                track.lost = True
                kept.append(track)
        for index in high:
            if index not in matched and len(kept) < MAX_TRACKS:
                track = Track(next(self._keys), detections[index], time_s)
                if config.min_hits <= 1:
                    track.track_id = next(self._ids)
                    step.confirmed.append(track)
                kept.append(track)
                matched[index] = track
        self._tracks = kept
        for index, detection in enumerate(detections):
            found = matched.get(index)
            step.tracks.append(found)
            if found is None:
                step.detections.append(detection)
            else:
                state = TrackState.TRACKED if found.confirmed else TrackState.NEW
                found.detection = _tagged(detection, found.track_id, state)
                step.detections.append(found.detection)
        return step

    def _associate(
        self,
        time_s: float,
        detections: list[Detection],
        indices: list[int],
        tracks: list[Track],
        least_iou: float,
    ) -> list[tuple[int, Track]]:
        """Match detections[indices] with `tracks` (removing the matched ones from `tracks`),
        one class at a time: a person never takes a car's track."""
        if not indices or not tracks:
            return []
        det_boxes: Array = np.array(
            [[detections[i].x_min, detections[i].y_min, detections[i].x_max, detections[i].y_max]
             for i in indices], dtype=np.float64,
        )  # fmt: skip
        track_boxes: Array = np.array([t.box_at(time_s) for t in tracks], dtype=np.float64)
        iou = iou_matrix(track_boxes, det_boxes)
        track_classes = np.array([t.detection.class_id for t in tracks])
        det_classes = np.array([detections[i].class_id for i in indices])
        iou[track_classes[:, None] != det_classes[None, :]] = 0.0
        pairs = match_by_iou(iou, least_iou)
        result = [(indices[col], tracks[row]) for row, col in pairs]
        matched_rows = {row for row, _ in pairs}
        tracks[:] = [t for row, t in enumerate(tracks) if row not in matched_rows]
        return result
