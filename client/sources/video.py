"""Video files, RTSP/HTTP streams and webcams through OpenCV's VideoCapture.

OpenCV (headless) rather than PyAV: it is already a dependency (the server decodes with it), it
reads files, RTSP and HTTP through its bundled FFmpeg and webcams through V4L2, and it hands back
BGR numpy arrays with no conversion. `bench/bench_client.py` measures both readers' decode rates
when PyAV happens to be installed; see docs/benchmarks.md.

Each source is opened once: `open()` keeps the capture (and its first frame) for `frames()`, so
a camera that takes a single connection is not probed and then refused. A live source that
drops, or is down at start, is reopened with backoff and jitter while `frames()` goes on; a file
that ends ends its frames.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from client.backoff import CAMERA_BACKOFF, BackoffPolicy
from client.frames import CapturedFrame
from client.sources.base import SourceError, SourceHealth

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
# A network camera that sends nothing for this long is treated as dropped (FFmpeg would wait
# 30 s by default); connecting gets the same bound, so a retry never hangs for long.
LIVE_TIMEOUT_S = 5.0

_Opened = tuple[cv2.VideoCapture, np.ndarray]


class VideoSource:
    """One VideoCapture at a time. Reads run on a private single thread: OpenCV captures are
    not thread-safe, and the release must never race a read that a cancellation left running.

    `reconnect` (live sources only): reopen a camera that drops or is down at start, with this
    backoff; None ends the frames when the stream ends, as a file does."""

    def __init__(
        self,
        name: str,
        target: str | int,
        *,
        live: bool,
        loop: bool = False,
        reconnect: BackoffPolicy | None = None,
        timeout_s: float = LIVE_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.native_fps: float | None = None
        self.live = live
        self.health = SourceHealth()
        self._target = target
        self._loop = loop
        self._reconnect = reconnect if live else None
        self._timeout_ms = round(timeout_s * 1000)
        self._rng = random.Random()
        self._reader: ThreadPoolExecutor | None = None
        # What open() opened, handed to frames(): the one connection this source makes.
        self._opened: _Opened | None = None

    @classmethod
    def file(cls, path: Path, *, loop: bool = False) -> VideoSource:
        if not path.exists():
            raise SourceError(str(path), "no such file")
        return cls(str(path), str(path), live=False, loop=loop)

    @classmethod
    def url(cls, url: str, *, reconnect: BackoffPolicy | None = CAMERA_BACKOFF) -> VideoSource:
        return cls(url, url, live=True, reconnect=reconnect)

    @classmethod
    def webcam(
        cls, device: str, *, reconnect: BackoffPolicy | None = CAMERA_BACKOFF
    ) -> VideoSource:
        devices = sorted(Path("/dev").glob("video*"))
        if not devices:
            raise SourceError(device, "no /dev/video* device on this machine")
        if device.startswith("/dev/"):
            if not Path(device).exists():
                raise SourceError(device, f"no such device (found {', '.join(map(str, devices))})")
            return cls(device, device, live=True, reconnect=reconnect)
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise SourceError(device, "expected webcam or webcam:N")
        return cls(device, int(index), live=True, reconnect=reconnect)

    def _capture(self) -> cv2.VideoCapture:
        if self.live and isinstance(self._target, str):
            # Bounded connect and read: a camera that goes silent is noticed and reopened.
            timeouts = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._timeout_ms,
            ]  # fmt: skip
            return cv2.VideoCapture(self._target, cv2.CAP_ANY, timeouts)
        return cv2.VideoCapture(self._target)

    def _open(self) -> _Opened:
        capture = self._capture()
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

    def _executor(self) -> ThreadPoolExecutor:
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="video-read")
        return self._reader

    async def open(self) -> None:
        """Open the source and keep it for `frames()` (and learn a file's fps).

        Raises SourceError for a file, or a live source without reconnect, that cannot be read;
        a live camera that is down is said once and retried by `frames()`."""
        if self._opened is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._opened = await loop.run_in_executor(self._executor(), self._open)
        except SourceError as error:
            if self._reconnect is None:
                raise
            self.health.lost(error.reason)
            self.health.failed_attempt(error.reason)
            log.warning("%s; retrying until it comes up", error)

    async def _connect(self) -> _Opened:
        """Open the source; a live one is retried with backoff until it answers."""
        loop = asyncio.get_running_loop()
        while True:
            if self.health.down and self._reconnect is not None:
                await asyncio.sleep(self._reconnect.delay_s(self.health.attempts + 1, self._rng))
            try:
                return await loop.run_in_executor(self._executor(), self._open)
            except SourceError as error:
                policy = self._reconnect
                if policy is None:
                    raise
                self.health.lost(error.reason)
                self.health.failed_attempt(error.reason)
                if policy.max_attempts and self.health.attempts >= policy.max_attempts:
                    raise SourceError(
                        self.name, f"gave up after {self.health.attempts} attempts: {error.reason}"
                    ) from error
                down_s = time.monotonic() - (self.health.down_since or time.monotonic())
                if policy.max_outage_s and down_s >= policy.max_outage_s:
                    raise SourceError(
                        self.name,
                        f"gave up: down for {down_s:.0f} s ({self.health.attempts} attempts, "
                        f"retried for up to {policy.max_outage_s:g} s): {error.reason}",
                    ) from error
                log.info("%s (attempt %d)", error, self.health.attempts)

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        loop = asyncio.get_running_loop()
        reader = self._executor()
        capture: cv2.VideoCapture | None = None
        try:
            while True:
                if self._opened is not None:
                    opened, self._opened = self._opened, None
                else:
                    opened = await self._connect()
                capture, first = opened
                if self.health.down:
                    log.warning("%s: back after %d attempts", self.name, self.health.attempts)
                self.health.back()
                pixels: np.ndarray | None = first
                while pixels is not None:
                    yield CapturedFrame(pixels, time.time_ns())
                    pixels = await loop.run_in_executor(reader, self._read, capture, self._loop)
                if self._reconnect is None:
                    return
                reader.submit(capture.release)
                capture = None
                self.health.lost("the stream ended, or sent nothing for too long")
                log.warning("%s: camera dropped; reconnecting", self.name)
        finally:
            if self._opened is not None:
                capture, self._opened = self._opened[0], None
            if capture is not None:
                reader.submit(capture.release)
            reader.shutdown(wait=False)
            self._reader = None
