"""A synthetic but real-pixel clip for analytics: the astronaut's head from scikit-image moving
left to right at a known speed over the `rocket` photo, then a few empty frames. It passes
through a zone (x = 250..400) and crosses a line (x = 450, drawn bottom to top, so moving right
crosses it IN). The server's analytics tests and the camera client's event tests use it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgefleet.face_frames import head, photo

WIDTH, HEIGHT = 640, 480
HEAD_H = 130
FPS = 15
STEP_PX = 12  # per frame at 15 fps: 180 px/s
FRAMES = 40  # the head's centre goes from x = 80 to x = 548
START_X = 80
EMPTY_FRAMES = 12  # 0.8 s without a face: the track is removed (lost_seconds 0.5)
FRAME_NS = 1_000_000_000 // FPS
ZONE_X = (250.0, 400.0)
LINE_X = 450.0
ZONE_NAME = "middle"
LINE_NAME = "door"


def head_centre(index: int) -> float:
    return START_X + STEP_PX * index


def zone_points() -> list[tuple[float, float]]:
    return [(ZONE_X[0], 0), (ZONE_X[1], 0), (ZONE_X[1], HEIGHT), (ZONE_X[0], HEIGHT)]


def line_points() -> list[tuple[float, float]]:
    return [(LINE_X, HEIGHT), (LINE_X, 0)]


def sequence() -> list[np.ndarray]:
    """The clip's RGB frames."""
    background = np.ascontiguousarray(
        cv2.resize(photo("rocket"), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    )
    source = head()
    head_w = int(HEAD_H * source.shape[1] / source.shape[0])
    face = cv2.resize(source, (head_w, HEAD_H), interpolation=cv2.INTER_AREA)
    frames = []
    for index in range(FRAMES):
        frame = background.copy()
        x = int(round(head_centre(index) - head_w / 2))
        frame[170 : 170 + HEAD_H, x : x + head_w] = face
        frames.append(frame)
    return frames + [background] * EMPTY_FRAMES


def write_clip(path: Path) -> Path:
    """The clip as an MJPG .avi at FPS, as a camera client's video file source reads it."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened(), "OpenCV has no MJPG writer"
    for frame in sequence():
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
