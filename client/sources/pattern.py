"""A synthetic test pattern (colour bars) with the frame counter burned in."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import cv2
import numpy as np

from client.frames import CapturedFrame
from client.sources.base import SourceHealth

_BARS_BGR = (
    (255, 255, 255),
    (0, 255, 255),
    (255, 255, 0),
    (0, 255, 0),
    (255, 0, 255),
    (0, 0, 255),
    (255, 0, 0),
)


def render_bars(width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, len(_BARS_BGR) + 1).astype(int)
    for colour, left, right in zip(_BARS_BGR, edges[:-1], edges[1:], strict=True):
        image[:, left:right] = colour
    return image


class TestPatternSource:
    """Colour bars, a moving marker and `#<counter>`; `frames` ends after `count` frames
    (None: never). It generates as fast as asked, so pacing decides the rate."""

    __test__ = False  # not a pytest class, whatever its name says

    def __init__(
        self, width: int = 640, height: int = 480, fps: float = 30.0, count: int | None = None
    ) -> None:
        self.name = f"pattern:{width}x{height}@{fps:g}"
        self.native_fps: float | None = fps
        self.live = True
        self.health = SourceHealth()
        self._bars = render_bars(width, height)
        self._count = count

    async def open(self) -> None:
        """Always available."""

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        height, width = self._bars.shape[:2]
        scale = max(height / 240.0, 0.5)
        counter = 0
        while self._count is None or counter < self._count:
            counter += 1
            image = self._bars.copy()
            marker_x = (counter * 8) % max(width - 20, 1)
            cv2.rectangle(image, (marker_x, height - 30), (marker_x + 20, height - 10), 0, -1)
            cv2.putText(
                image,
                f"#{counter:06d}",
                (10, int(40 * scale)),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (0, 0, 0),
                max(int(2 * scale), 1),
                cv2.LINE_AA,
            )
            yield CapturedFrame(image, time.time_ns())
