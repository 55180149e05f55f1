"""Prometheus metrics, on a registry owned by the server instance (never the global default)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from common.prometheus_http import instance_registry
from server.errors import EdgeError, InvalidInput, Overloaded, ShuttingDown, Unsupported

# The `outcome` label of edgefleet_requests_total: a closed set, never an exception's name.
OUTCOMES = (
    "success", "invalid_input", "unsupported", "overloaded", "shutting_down", "error",
    "runtime_error",
)  # fmt: skip


def outcome_of(error: BaseException) -> str:
    """The bounded `outcome` label value for a failed request: `error` for any other refusal the
    server chose, `runtime_error` for a failure it did not (a bug, the runtime raising)."""
    if isinstance(error, InvalidInput):
        return "invalid_input"
    if isinstance(error, Unsupported):
        return "unsupported"
    if isinstance(error, Overloaded):
        return "overloaded"
    if isinstance(error, ShuttingDown):
        return "shutting_down"
    if isinstance(error, EdgeError):
        return "error"
    return "runtime_error"


_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else instance_registry("server")
        labels = ("model", "version")
        self.requests = Counter(
            "edgefleet_requests",
            f"Inference requests and frames, by outcome ({', '.join(OUTCOMES)}).",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "edgefleet_request_latency_seconds",
            "End-to-end time inside the server per request or frame.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_latency = Histogram(
            "edgefleet_queue_latency_seconds",
            "Time a request waited in the model's batching queue.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_latency = Histogram(
            "edgefleet_compute_latency_seconds",
            "Model execution time per batch.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgefleet_batch_size",
            "Rows per model execution.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.frames_dropped = Counter(
            "edgefleet_frames_dropped",
            "Camera frames dropped by the drop_oldest overload policy.",
            labels,
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "edgefleet_active_streams",
            "Open FrameStream camera streams.",
            registry=self.registry,
        )
        # Camera frames by outcome: answered, replaced, stale, overloaded, error. Per model, and
        # per stream only while the stream is open (its series go when it closes).
        self.stream_frames = Counter(
            "edgefleet_stream_frames",
            "Camera stream frames by outcome (answered, replaced, stale, overloaded, error).",
            ("model", "outcome"),
            registry=self.registry,
        )
        self.stream_result_age = Histogram(
            "edgefleet_stream_result_age_seconds",
            "Camera frames: from arrival at the server to the result.",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.open_stream_frames = Counter(
            "edgefleet_open_stream_frames",
            "Frames of each open camera stream by outcome; removed when the stream closes.",
            ("model", "stream", "outcome"),
            registry=self.registry,
        )
        self.open_stream_result_age = Gauge(
            "edgefleet_open_stream_result_age_seconds",
            "Age of each open camera stream's latest result (arrival to result).",
            ("model", "stream"),
            registry=self.registry,
        )
        # The frame memory budget of all streams (server/frames/memory.py).
        self.frame_memory = Gauge(
            "edgefleet_frame_memory_bytes",
            "Bytes the camera frames of all streams hold now (received and decoded pixels).",
            registry=self.registry,
        )
        self.frame_memory_budget = Gauge(
            "edgefleet_frame_memory_budget_bytes",
            "The most bytes the camera frames of all streams may hold.",
            registry=self.registry,
        )
        self.frame_memory_read_ahead = Gauge(
            "edgefleet_frame_memory_read_ahead_bytes",
            "Of the frame memory bytes: what gRPC may receive for the streams before they ask "
            "(each stream's last message size, held until the stream ends).",
            registry=self.registry,
        )
        self.frame_memory_overcommits = Counter(
            "edgefleet_frame_memory_overcommits",
            "Times the camera frames and read-ahead went past the frame memory budget: frames "
            "larger than their stream began with, or a budget too small for a frame beside the "
            "open BLOCK streams' read-ahead.",
            registry=self.registry,
        )
        self.frames_over_memory_budget = Counter(
            "edgefleet_frames_over_memory_budget",
            "Camera frames that did not fit the frame memory budget: dropped (live streams), "
            "waited (BLOCK streams) or refused (larger than the whole budget).",
            ("model", "outcome"),
            registry=self.registry,
        )
        self.open_stream_cost = Counter(
            "edgefleet_open_stream_cost_seconds",
            "Device time each open camera stream's frames cost (decode, model runs and "
            "post-processing, every pipeline stage), the measure detector and pipeline frames "
            "are shared by; removed when the stream closes.",
            ("model", "stream"),
            registry=self.registry,
        )
        self.frames_truncated = Counter(
            "edgefleet_frames_truncated",
            "Camera frames over their pipeline's per-frame work budget (text lines read, "
            "cascade input side), answered with the part that fits.",
            ("model",),
            registry=self.registry,
        )
        self.model_events = Counter(
            "edgefleet_model_events",
            "Model lifecycle events: load, swap, unload, load_failed, worker_died, run_timeout.",
            ("model", "version", "event"),
            registry=self.registry,
        )

        self.http_parse_restarts = Counter(
            "edgefleet_http_parse_process_restarts",
            "Times the HTTP port's JSON parse process died (killed for memory, say) and was "
            "started again; the request it was parsing was answered 429 (retry).",
            registry=self.registry,
        )

    def watch_models(self, loaded: Callable[[], Iterable[ModelInfoLabels]]) -> None:
        """Expose `edgefleet_model_info` for the versions `loaded()` describes at each scrape."""
        self.registry.register(_ModelInfo(loaded))


class ModelInfoLabels(NamedTuple):
    """How one loaded model version runs: the labels of its `edgefleet_model_info` series."""

    model: str
    version: str
    backend: str
    provider: str
    precision: str


class _ModelInfo(Collector):
    def __init__(self, loaded: Callable[[], Iterable[ModelInfoLabels]]) -> None:
        self._loaded = loaded

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "edgefleet_model_info",
            "Always 1 per loaded model version; the labels say how it runs.",
            labels=["model", "version", "backend", "provider", "precision"],
        )
        for labels in _snapshot(self._loaded):
            info.add_metric(list(labels), 1.0)
        yield info


def _snapshot(loaded: Callable[[], Iterable[ModelInfoLabels]]) -> list[ModelInfoLabels]:
    """`loaded()` from the scrape thread: the event loop may change the registry meanwhile
    (a dict resized under iteration raises RuntimeError), so retry; a scrape never fails."""
    for _attempt in range(5):
        with contextlib.suppress(RuntimeError):
            return list(loaded())
    return []


STREAM_OUTCOMES = ("answered", "replaced", "stale", "overloaded", "error")


class StreamMetrics:
    """One open stream's metric children, looked up once (never per frame), removed on close."""

    def __init__(self, metrics: ServerMetrics, model: str, stream: str) -> None:
        self._metrics = metrics
        self._model = model
        self._stream = stream
        self._model_counts = {
            outcome: metrics.stream_frames.labels(model, outcome) for outcome in STREAM_OUTCOMES
        }
        self._stream_counts = {
            outcome: metrics.open_stream_frames.labels(model, stream, outcome)
            for outcome in STREAM_OUTCOMES
        }
        self._age = metrics.stream_result_age.labels(model)
        self._stream_age = metrics.open_stream_result_age.labels(model, stream)
        self._memory_counts = {
            outcome: metrics.frames_over_memory_budget.labels(model, outcome)
            for outcome in ("dropped", "waited", "refused")
        }
        self._truncated = metrics.frames_truncated.labels(model)
        self._cost = metrics.open_stream_cost.labels(model, stream)
        self._open = True

    def answered(self, age_s: float) -> None:
        self._model_counts["answered"].inc()
        self._stream_counts["answered"].inc()
        self._age.observe(age_s)
        self._stream_age.set(age_s)

    def dropped(self, outcome: str) -> None:
        """`outcome`: why the frame was dropped (replaced, stale, overloaded)."""
        self._model_counts[outcome].inc()
        self._stream_counts[outcome].inc()

    def failed(self) -> None:
        self._model_counts["error"].inc()
        self._stream_counts["error"].inc()

    def cost(self, seconds: float) -> None:
        """One of the stream's frames cost the device `seconds` of work."""
        self._cost.inc(max(seconds, 0.0))

    def truncated(self) -> None:
        """A frame over its pipeline's work budget, answered with the part that fits."""
        self._truncated.inc()

    def memory_dropped(self) -> None:
        """A live frame dropped because the frame memory budget was full."""
        self._memory_counts["dropped"].inc()

    def memory_waited(self) -> None:
        """A BLOCK frame waited for room in the frame memory budget."""
        self._memory_counts["waited"].inc()

    def memory_refused(self) -> None:
        """A frame refused: larger than the whole frame memory budget."""
        self._memory_counts["refused"].inc()

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        for outcome in STREAM_OUTCOMES:
            with contextlib.suppress(KeyError):
                self._metrics.open_stream_frames.remove(self._model, self._stream, outcome)
        with contextlib.suppress(KeyError):
            self._metrics.open_stream_result_age.remove(self._model, self._stream)
        with contextlib.suppress(KeyError):
            self._metrics.open_stream_cost.remove(self._model, self._stream)
