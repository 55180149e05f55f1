"""Video files, RTSP/HTTP streams and webcams through OpenCV's VideoCapture.

OpenCV (headless) rather than PyAV: it is already a dependency (the server decodes with it), it
reads files, RTSP and HTTP through its bundled FFmpeg and webcams through V4L2, and it hands back
BGR numpy arrays with no conversion. `bench/bench_client.py` measures both readers' decode rates
when PyAV happens to be installed; see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from client.frames import CapturedFrame
from client.sources.base import SourceError

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


class VideoSource:
    """One VideoCapture. Reads run on a private single thread: OpenCV captures are not
    thread-safe, and the release must never race a read that a cancellation left running."""

    def __init__(self, name: str, target: str | int, *, live: bool, loop: bool = False) -> None:
        self.name = name
        self.native_fps: float | None = None
        self.live = live
        self._target = target
        self._loop = loop

    @classmethod
    def file(cls, path: Path, *, loop: bool = False) -> VideoSource:
        if not path.exists():
            raise SourceError(str(path), "no such file")
        return cls(str(path), str(path), live=False, loop=loop)

    @classmethod
    def url(cls, url: str) -> VideoSource:
        return cls(url, url, live=True)

    @classmethod
    def webcam(cls, device: str) -> VideoSource:
        devices = sorted(Path("/dev").glob("video*"))
        if not devices:
            raise SourceError(device, "no /dev/video* device on this machine")
        if device.startswith("/dev/"):
            if not Path(device).exists():
                raise SourceError(device, f"no such device (found {', '.join(map(str, devices))})")
            return cls(device, device, live=True)
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise SourceError(device, "expected webcam or webcam:N")
        return cls(device, int(index), live=True)

    def _open(self) -> tuple[cv2.VideoCapture, np.ndarray]:
        capture = cv2.VideoCapture(self._target)
        if not capture.isOpened():
            capture.release()
            reason = (
                "could not connect, or no video stream at this address"
                if self.live
                else "OpenCV could not open it (not a video, or no decoder for its codec)"
            )
            raise SourceError(self.name, reason)
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise SourceError(self.name, "opened, but no frame could be decoded")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        if not self.live and math.isfinite(fps) and 0 < fps <= 1000:
            self.native_fps = fps
        return capture, first

    @staticmethod
    def _read(capture: cv2.VideoCapture, rewind: bool) -> np.ndarray | None:
        ok, pixels = capture.read()
        if (not ok or pixels is None) and rewind:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, pixels = capture.read()
        return pixels if ok else None

    async def open(self) -> None:
        """Open once to fail early with a clear message (and learn the file's fps)."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, thread_name_prefix="video-probe") as reader:
            capture, _ = await loop.run_in_executor(reader, self._open)
            await loop.run_in_executor(reader, capture.release)

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(1, thread_name_prefix="video-read")
        opened: cv2.VideoCapture | None = None
        try:
            capture, first = await loop.run_in_executor(reader, self._open)
            opened = capture
            pixels: np.ndarray | None = first
            while pixels is not None:
                yield CapturedFrame(pixels, time.time_ns())
                pixels = await loop.run_in_executor(reader, self._read, capture, self._loop)
        finally:
            if opened is not None:
                reader.submit(opened.release)
            reader.shutdown(wait=False)
