"""Repeated failures in one log line per kind and interval, with a count; tracebacks at DEBUG.

A camera sending a bad frame 30 times a second must not write 30 tracebacks a second: the first
failure of a kind is logged at once, later ones of the same kind are counted and reported in
one line when `interval_s` has passed since the last line for that kind."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# Kinds are (what failed, exception class): few in practice; bounded in case they are not.
_MAX_KINDS = 256


class FailureLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.ERROR,
    ) -> None:
        self._log = logger
        self._level = level
        self._interval_s = interval_s
        self._clock = clock
        # kind -> (failures not yet reported, time of the last line for the kind)
        self._kinds: dict[str, tuple[int, float]] = {}

    def failed(self, what: str, error: BaseException) -> None:
        """Count one failure of `what`; log a line for its kind if one is due."""
        kind = f"{what} ({type(error).__name__})"
        now = self._clock()
        pending, last = self._kinds.get(kind, (0, float("-inf")))
        pending += 1
        if now - last >= self._interval_s:
            if last == float("-inf"):
                self._log.log(self._level, "%s: %s", kind, error)
            else:
                self._log.log(
                    self._level,
                    "%s: %s; %d such failures in the last %.0f s",
                    kind, error, pending, now - last,
                )  # fmt: skip
            pending, last = 0, now
        if kind not in self._kinds and len(self._kinds) >= _MAX_KINDS:
            self._kinds.pop(next(iter(self._kinds)))
        self._kinds[kind] = (pending, last)
        self._log.debug("%s", kind, exc_info=error)
