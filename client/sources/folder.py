"""An image folder (or one image file) played in name order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2

from client.frames import CapturedFrame
from client.sources.base import SourceError, SourceHealth

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


class ImageFolderSource:
    def __init__(self, path: Path, *, loop: bool = False) -> None:
        self.name = str(path)
        self.native_fps: float | None = None
        self.live = False
        self.health = SourceHealth()
        self._loop = loop
        if path.is_file():
            self._files = [path]
        elif path.is_dir():
            self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise SourceError(self.name, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        else:
            raise SourceError(self.name, "no such file or directory")

    async def open(self) -> None:
        """Nothing to open: unreadable files are skipped (and named) as they come."""

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        while True:
            decoded = 0
            for path in self._files:
                pixels = await asyncio.to_thread(cv2.imread, str(path), cv2.IMREAD_COLOR)
                if pixels is None:
                    # One unreadable file must not end a folder's stream; say which and go on.
                    log.warning("%s: skipped, not a readable image", path)
                    continue
                decoded += 1
                yield CapturedFrame(pixels, time.time_ns(), origin=path.name)
            if decoded == 0:
                raise SourceError(self.name, "none of its images could be decoded")
            if not self._loop:
                return
