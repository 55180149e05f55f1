"""Turn a command-line source string into a frame source."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from client.backoff import CAMERA_BACKOFF
from client.sources.base import FrameSource, SourceError
from client.sources.folder import IMAGE_SUFFIXES, ImageFolderSource
from client.sources.pattern import TestPatternSource
from client.sources.video import LIVE_SCHEMES, VideoSource

_PATTERN = re.compile(r"^pattern(?::(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?$")

SOURCE_HELP = (
    "a video file, an rtsp:// or http(s):// URL, an image folder or image file, "
    "`webcam[:N]` or /dev/videoN, or `pattern[:WxH][@FPS]` (synthetic, frame counter burned in)"
)


def open_source(
    spec: str,
    *,
    loop: bool = False,
    count: int | None = None,
    reconnect: bool = True,
    retry_for_s: float | None = None,
) -> FrameSource:
    """The source `spec` names. Raises SourceError naming the source and the reason.

    `reconnect`: a network camera or webcam that drops, or is down at start, is retried with
    backoff (CAMERA_BACKOFF); without it, a live source that ends ends its frames.
    `retry_for_s`: an outage lasting this long ends the camera's frames with a SourceError
    (None: retried forever)."""
    backoff = CAMERA_BACKOFF if reconnect else None
    if backoff is not None and retry_for_s:
        backoff = dataclasses.replace(backoff, max_outage_s=retry_for_s)
    pattern = _PATTERN.match(spec)
    if pattern:
        width, height, fps = pattern.groups()
        size = (int(width), int(height)) if width else (640, 480)
        if min(size) < 16:
            raise SourceError(spec, "pattern size must be at least 16x16")
        return TestPatternSource(size[0], size[1], float(fps) if fps else 30.0, count)
    if spec.startswith(LIVE_SCHEMES):
        return VideoSource.url(spec, reconnect=backoff)
    if spec.startswith("webcam") or spec.startswith("/dev/video"):
        return VideoSource.webcam(spec, reconnect=backoff)
    path = Path(spec)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(path, loop=loop)
    return VideoSource.file(path, loop=loop)
