"""Draw what the server found onto the frame it was found in, and write annotated video.

Boxes with their caption (text read, else label) and score, text-line outlines (`polygon`) and
keypoints (a face's eyes, nose and mouth corners) are drawn in the frame's own pixels, which
are the coordinates the server answers in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from client.stream import Detected

BOX = (0, 200, 0)  # BGR
OUTLINE = (0, 160, 255)
POINT = (0, 0, 255)
TEXT_COLOUR = (255, 255, 255)


def draw_detections(pixels_bgr: np.ndarray, detections: Sequence[Detected]) -> np.ndarray:
    """A copy of the frame with every detection drawn on it."""
    image = pixels_bgr.copy()
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 320))
    for item in detections:
        top_left = (round(item.x_min), round(item.y_min))
        cv2.rectangle(image, top_left, (round(item.x_max), round(item.y_max)), BOX, thickness)
        if item.polygon:
            corners = np.round(np.asarray(item.polygon, np.float32)).astype(np.int32)
            cv2.polylines(image, [corners], True, OUTLINE, thickness)
        for x, y in item.keypoints:
            cv2.circle(image, (round(x), round(y)), thickness + 1, POINT, -1, cv2.LINE_AA)
        caption = f"{item.caption} {item.score:.2f}"
        scale = 0.4 * thickness
        (text_w, text_h), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x, y = top_left[0], max(top_left[1], text_h + base + 2)
        cv2.rectangle(image, (x, y - text_h - base - 2), (x + text_w + 2, y), BOX, -1)
        cv2.putText(image, caption, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    TEXT_COLOUR, 1, cv2.LINE_AA)  # fmt: skip
    return image


# By file extension; anything else is MJPG. FFV1 keeps every pixel (evidence, tests).
VIDEO_CODECS = {".mkv": "FFV1", ".mp4": "mp4v"}


class VideoSink:
    """Annotated frames into one video file (lossless FFV1 in .mkv, mp4v in .mp4, MJPG
    otherwise), opened at the first frame's size; later frames of another size are resized to
    it."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps if fps > 0 else 30.0
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, pixels_bgr: np.ndarray, detections: Sequence[Detected]) -> None:
        image = draw_detections(pixels_bgr, detections)
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            codec = VIDEO_CODECS.get(self.path.suffix.lower(), "MJPG")
            writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter.fourcc(*codec), self.fps, self._size
            )
            if not writer.isOpened():
                # Not kept: a later frame must not count as written into nothing.
                raise OSError(f"cannot write video {self.path}")
            self._writer = writer
        if self._size != (image.shape[1], image.shape[0]):
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
