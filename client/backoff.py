"""Exponential backoff with jitter, shared by the server stream's reconnects and the cameras'."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with jitter; `max_attempts` consecutive failures end the stream."""

    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    # Up to this fraction of each delay is randomised away, so cameras do not reconnect in step.
    jitter: float = 0.5
    # 0 retries forever (a camera that must come back whenever the server does).
    max_attempts: int = 8
    # Give up once an outage has lasted this long, however many attempts; 0: no time bound.
    max_outage_s: float = 0.0

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier ** max(attempt - 1, 0))
        return base * (1.0 - self.jitter * rng.random())


# A live camera that drops or is down at start: retried forever, from 0.5 s up to 10 s apart.
CAMERA_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=10.0, max_attempts=0)
