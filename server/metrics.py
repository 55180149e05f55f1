"""Prometheus metrics, on a registry owned by the server instance (never the global default)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "edgefleet_requests",
            "Inference requests and frames, by outcome.",
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
            ("model",),
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "edgefleet_active_streams",
            "Open FrameStream camera streams.",
            registry=self.registry,
        )
        self.model_events = Counter(
            "edgefleet_model_events",
            "Model lifecycle events: load, swap, unload, load_failed.",
            ("model", "version", "event"),
            registry=self.registry,
        )
