"""Live statistics of one camera stream: counters, fps, latency percentiles and result age."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from client.sources.base import SourceHealth

# Percentiles describe the recent past, not the whole run: a camera streams for days.
LATENCY_WINDOW = 1024
FPS_WINDOW_S = 5.0


class StreamState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of the counters, safe to hand to a display or serialise."""

    state: StreamState
    frames_sent: int
    frames_answered: int
    # Reported by the server in FramesDropped messages (its overload policy at work).
    frames_dropped: int
    # Of those, dropped because they waited longer than the stream's max_age_ms.
    frames_stale: int
    # Dropped here, before sending, because the send queue was full (live sources only).
    frames_dropped_client: int
    # Sent on a connection that broke before the server answered them.
    frames_lost: int
    frames_rejected: int
    # Reconnects to the server (the stream broke); the camera's own are camera_reconnects.
    reconnects: int
    fps: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    result_age_ms: float | None
    last_labels: tuple[str, ...]
    last_error: str | None
    # The camera itself (not the server): unreachable now, and times it came back.
    camera_down: bool = False
    camera_reconnects: int = 0
    # Read from the source and discarded before encoding: no flow credit was held (live streams).
    frames_skipped_source: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "frames_sent": self.frames_sent,
            "frames_answered": self.frames_answered,
            "frames_dropped": self.frames_dropped,
            "frames_stale": self.frames_stale,
            "frames_dropped_client": self.frames_dropped_client,
            "frames_skipped_source": self.frames_skipped_source,
            "frames_lost": self.frames_lost,
            "frames_rejected": self.frames_rejected,
            "reconnects": self.reconnects,
            "fps": round(self.fps, 2),
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "result_age_ms": self.result_age_ms,
            "last_labels": list(self.last_labels),
            "last_error": self.last_error,
            "camera_down": self.camera_down,
            "camera_reconnects": self.camera_reconnects,
        }


@dataclass
class StreamStats:
    """Mutable counters owned by one stream; read them through `snapshot()`.

    Times come from the monotonic clock except result age, which compares the camera's capture
    clock (unix ns, carried in the frame) with this host's wall clock, as the protocol intends.
    """

    state: StreamState = StreamState.CONNECTING
    frames_sent: int = 0
    frames_answered: int = 0
    frames_dropped: int = 0
    frames_stale: int = 0
    frames_dropped_client: int = 0
    frames_skipped_source: int = 0
    frames_lost: int = 0
    frames_rejected: int = 0
    reconnects: int = 0
    last_labels: tuple[str, ...] = ()
    last_error: str | None = None
    last_result_age_ms: float | None = None
    # The source's own health, shared with it (a camera that drops and comes back).
    source: SourceHealth = field(default_factory=SourceHealth)
    _latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    _answer_times: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def record_result(
        self,
        latency_s: float,
        capture_time_unix_ns: int,
        labels: tuple[str, ...],
        now_monotonic: float | None = None,
    ) -> None:
        self.frames_answered += 1
        self._latencies_ms.append(latency_s * 1000.0)
        self._answer_times.append(time.monotonic() if now_monotonic is None else now_monotonic)
        if capture_time_unix_ns:
            self.last_result_age_ms = (time.time_ns() - capture_time_unix_ns) / 1e6
        self.last_labels = labels

    def fps(self, now_monotonic: float | None = None) -> float:
        now = time.monotonic() if now_monotonic is None else now_monotonic
        recent = [t for t in self._answer_times if now - t <= FPS_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        span = now - recent[0]
        return (len(recent) - 1) / span if span > 0 else 0.0

    def latency_percentiles_ms(self) -> tuple[float | None, float | None, float | None]:
        if not self._latencies_ms:
            return None, None, None
        p50, p95, p99 = np.percentile(np.fromiter(self._latencies_ms, float), [50, 95, 99])
        return round(float(p50), 2), round(float(p95), 2), round(float(p99), 2)

    def snapshot(self) -> StatsSnapshot:
        p50, p95, p99 = self.latency_percentiles_ms()
        age = None if self.last_result_age_ms is None else round(self.last_result_age_ms, 2)
        return StatsSnapshot(
            state=self.state,
            frames_sent=self.frames_sent,
            frames_answered=self.frames_answered,
            frames_dropped=self.frames_dropped,
            frames_stale=self.frames_stale,
            frames_dropped_client=self.frames_dropped_client,
            frames_lost=self.frames_lost,
            frames_rejected=self.frames_rejected,
            reconnects=self.reconnects,
            fps=self.fps(),
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            latency_p99_ms=p99,
            result_age_ms=age,
            last_labels=self.last_labels,
            last_error=self.last_error,
            camera_down=self.source.down,
            camera_reconnects=self.source.reconnects,
            frames_skipped_source=self.frames_skipped_source,
        )
