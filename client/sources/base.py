"""What every frame source offers, and the one error a source raises."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from client.frames import CapturedFrame


class SourceError(Exception):
    """A source that cannot be opened or read; the message names the source and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class SourceHealth:
    """How a source is doing; a live camera updates it as it drops and comes back."""

    # The camera is unreachable now (dropped, or down at start) and being retried.
    down: bool = False
    # Times the camera came back after it dropped or was down at start.
    reconnects: int = 0
    # Connection attempts in the current outage (0 while the camera is up).
    attempts: int = 0
    last_error: str | None = None
    # Monotonic time the current outage began; None while the camera is up.
    down_since: float | None = None
    # Told of each change, down (True, the reason) or up (False, ""): the camera's events.
    listener: Callable[[bool, str], None] | None = field(default=None, repr=False, compare=False)

    def lost(self, reason: str) -> None:
        was_down, self.down = self.down, True
        self.last_error = reason
        if not was_down:
            self.down_since = time.monotonic()
        if not was_down and self.listener is not None:
            self.listener(True, reason)

    def failed_attempt(self, reason: str) -> None:
        self.attempts += 1
        self.last_error = reason

    def back(self) -> None:
        was_down, self.down = self.down, False
        if was_down:
            self.reconnects += 1
        self.attempts = 0
        self.down_since = None
        if was_down and self.listener is not None:
            self.listener(False, "")


class FrameSource(Protocol):
    # What the user asked for (path, URL, `pattern:640x480`), for messages and displays.
    name: str
    # Frames per second the source is meant to play at; None when it has no clock of its own
    # (an image folder) or paces itself (a live camera, whose reads block until a frame comes).
    native_fps: float | None
    # A live source (camera, stream, synthetic pattern) would rather lose a stale frame than
    # fall behind: its streams default to DROP_OLDEST. Files and folders default to BLOCK.
    live: bool
    health: SourceHealth

    async def open(self) -> None:
        """Check the source can be read (raise SourceError if not) and learn its fps."""
        ...

    def frames(self) -> AsyncIterator[CapturedFrame]:
        """Yield frames until the source ends; close the underlying device when done."""
        ...
