"""Frame generators for client tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import cv2

from client.frames import CapturedFrame
from tests.conftest import photo


async def photo_frames(name: str, count: int = 1) -> AsyncIterator[CapturedFrame]:
    pixels = cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR)
    for _ in range(count):
        yield CapturedFrame(pixels, time.time_ns())
