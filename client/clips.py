"""Event clips: a short annotated video around each analytics event of a camera.

Each camera keeps a ring of its recent answered frames (the last `before_s` seconds of capture
time, capped in bytes whatever the frame size). An event starts a clip with the ring's frames
from `before_s` before it and goes on until `after_s` after it; an event while a clip is open
extends that clip instead of starting a second one. Frames are drawn and encoded by one writer
thread per camera (the same overlay and codec as `--save-video`), so a stream never waits on
the disk; frames the writer cannot keep up with are dropped and counted, never queued without
bound.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from client.events import CLIP_EVENT_KINDS, CLIP_SUFFIX, AnalyticsEvent, ClipSettings
from client.overlay import VideoSink
from client.stream import Detected

log = logging.getLogger(__name__)


@dataclass
class ClipStats:
    written: int = 0
    frames_written: int = 0
    # Clip frames the writer thread could not take in time (the byte budget was full).
    frames_dropped: int = 0
    # Ring frames evicted before they were `before_s` old, to stay within the byte budget.
    frames_evicted_early: int = 0
    files: list[str] = field(default_factory=list)
    # The first write that failed (a full disk, a folder not writable); later ones only count.
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "written": self.written,
            "frames_written": self.frames_written,
            "frames_dropped": self.frames_dropped,
            "frames_evicted_early": self.frames_evicted_early,
            "files": list(self.files),
            "error": self.error,
        }


@dataclass(frozen=True)
class _Frame:
    capture_time_unix_ns: int
    pixels_bgr: np.ndarray
    detections: tuple[Detected, ...]

    @property
    def nbytes(self) -> int:
        return int(self.pixels_bgr.nbytes)


def clip_name(camera: str, event: AnalyticsEvent) -> str:
    """`door-cam-20261207T210341.123Z-zone_enter.avi`: the camera, its first event's capture
    time (UTC) and kind."""
    moment = datetime.datetime.fromtimestamp(event.capture_time_unix_ns / 1e9, tz=datetime.UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S.") + f"{moment.microsecond // 1000:03d}Z"
    return f"{camera}-{stamp}-{event.kind.value}{CLIP_SUFFIX}"


class ClipRecorder:
    """One camera's clips. `frame` and `event` are called on the event loop and never block;
    `close` (call it off the loop) finishes the open clip and waits for the writer."""

    def __init__(self, camera: str, settings: ClipSettings, fps: float) -> None:
        self.camera = camera
        self.settings = settings
        self.fps = fps
        self.stats = ClipStats()
        settings.directory.mkdir(parents=True, exist_ok=True)
        self._ring: deque[_Frame] = deque()
        self._ring_bytes = 0
        # Bytes handed to the writer and not yet written; shares the budget with the ring.
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clips {camera}")
        self._open: VideoSink | None = None
        self._open_until_ns = 0
        self._last_written_ns = -1
        self._futures: deque[Future[None]] = deque()

    def wants(self, event: AnalyticsEvent) -> bool:
        if event.kind not in CLIP_EVENT_KINDS:
            return False
        return not self.settings.events or event.kind in self.settings.events

    def frame(
        self, capture_time_unix_ns: int, pixels_bgr: np.ndarray, detections: Sequence[Detected]
    ) -> None:
        item = _Frame(capture_time_unix_ns, pixels_bgr, tuple(detections))
        if self._open is not None:
            if capture_time_unix_ns <= self._open_until_ns:
                self._write(item)
            else:
                self._finish()
        self._remember(item)

    def event(self, event: AnalyticsEvent) -> None:
        if not self.wants(event):
            return
        until = event.capture_time_unix_ns + round(self.settings.after_s * 1e9)
        if self._open is not None:
            self._open_until_ns = max(self._open_until_ns, until)
            return
        path = self.settings.directory / clip_name(self.camera, event)
        self._open = VideoSink(path, self.fps)
        self._open_until_ns = until
        self._last_written_ns = -1
        start = event.capture_time_unix_ns - round(self.settings.before_s * 1e9)
        for item in self._ring:
            if start <= item.capture_time_unix_ns <= until:
                self._write(item)

    def close(self) -> None:
        """Finish the open clip (cut short at the stream's end) and wait for every write."""
        if self._open is not None:
            self._finish()
        self._writer.shutdown(wait=True)
        while self._futures:
            self._futures.popleft().result()

    def _remember(self, item: _Frame) -> None:
        self._ring.append(item)
        self._ring_bytes += item.nbytes
        oldest_kept = item.capture_time_unix_ns - round(self.settings.before_s * 1e9)
        while self._ring and self._ring[0].capture_time_unix_ns < oldest_kept:
            self._ring_bytes -= self._ring.popleft().nbytes
        while len(self._ring) > 1 and self._ring_bytes + self._pending() > self.settings.max_bytes:
            self._ring_bytes -= self._ring.popleft().nbytes
            self.stats.frames_evicted_early += 1

    def _pending(self) -> int:
        with self._lock:
            return self._pending_bytes

    def _write(self, item: _Frame) -> None:
        if item.capture_time_unix_ns <= self._last_written_ns:
            return  # frames reach a clip once, in capture order
        if self._pending() + item.nbytes > self.settings.max_bytes:
            with self._lock:
                self.stats.frames_dropped += 1
            return
        with self._lock:
            self._pending_bytes += item.nbytes
        self._last_written_ns = item.capture_time_unix_ns
        sink = self._open
        assert sink is not None

        def write() -> None:
            try:
                sink.write(item.pixels_bgr, item.detections)
            except (OSError, cv2.error) as error:
                # A folder that cannot be written: the stream goes on, the loss is counted.
                self._failed(error)
            finally:
                with self._lock:
                    self._pending_bytes -= item.nbytes

        self._submit(self._writer.submit(write))

    def _finish(self) -> None:
        sink = self._open
        assert sink is not None
        self._open = None

        def finish() -> None:
            try:
                sink.close()
            except (OSError, cv2.error) as error:
                self._failed(error)
                return
            if sink.frames:
                self.stats.written += 1
                self.stats.frames_written += sink.frames
                self.stats.files.append(str(sink.path))

        self._submit(self._writer.submit(finish))

    def _failed(self, error: Exception) -> None:
        with self._lock:
            self.stats.frames_dropped += 1
            if self.stats.error is None:
                self.stats.error = str(error)
                log.warning("%s: event clip not written: %s", self.camera, error)

    def _submit(self, future: Future[None]) -> None:
        # Keep only unfinished writes; a failed one (disk full) surfaces at close.
        self._futures.append(future)
        while self._futures and self._futures[0].done() and self._futures[0].exception() is None:
            self._futures.popleft()
