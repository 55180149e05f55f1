"""Per-model-version statistics: KServe's cumulative counters plus a recent window for telemetry.

Everything is updated on the event loop thread, so no locks are needed.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

# Seconds of history behind fps and latency percentiles in telemetry.
TELEMETRY_WINDOW_S = 30.0
# Bounded: at most this many recent request latencies are kept for percentiles.
MAX_WINDOW_SAMPLES = 4096


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Cumulative counters in KServe's shape (success/fail/queue/compute_*)."""

    name: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    # Rows inferred (a batch of 8 in one request counts 8) and model executions.
    inference_count: int = 0
    execution_count: int = 0
    frames_dropped: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchDurations] = field(default_factory=dict)
    # (monotonic time, end-to-end seconds) of recent successes, for telemetry.
    _recent: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=MAX_WINDOW_SAMPLES)
    )

    def record_execution(self, batch_size: int, infer_s: float) -> None:
        self.execution_count += 1
        self.inference_count += batch_size
        batch = self.batches.setdefault(batch_size, BatchDurations())
        batch.compute_infer.add(infer_s)
        self.last_inference_ms = int(time.time() * 1000)

    def record_success(
        self, *, total_s: float, queue_s: float, input_s: float, infer_s: float, output_s: float
    ) -> None:
        self.success.add(total_s)
        self.queue.add(queue_s)
        self.compute_input.add(input_s)
        self.compute_infer.add(infer_s)
        self.compute_output.add(output_s)
        self._recent.append((time.monotonic(), total_s))

    def record_failure(self, total_s: float) -> None:
        self.fail.add(total_s)

    def record_drops(self, count: int) -> None:
        self.frames_dropped += count

    def window(self, now: float | None = None) -> tuple[float, float, float]:
        """(successful requests per second, p50 ms, p95 ms) over the last TELEMETRY_WINDOW_S
        seconds. Failed requests are neither fps nor latency: without a success the latencies
        are NaN ("no data"), never a 0 that a `p95_latency_ms <= ...` gate would pass."""
        now = time.monotonic() if now is None else now
        cutoff = now - TELEMETRY_WINDOW_S
        latencies = [latency for stamp, latency in self._recent if stamp >= cutoff]
        if not latencies:
            return 0.0, math.nan, math.nan
        oldest = min(stamp for stamp, _ in self._recent if stamp >= cutoff)
        span = max(now - oldest, 1.0)
        p50, p95 = np.percentile(np.asarray(latencies) * 1000.0, [50, 95])
        return len(latencies) / span, float(p50), float(p95)
