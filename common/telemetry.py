"""The telemetry record a device sends every interval, spelled once for everyone who touches it:
the fleet agent and the simulator build it, the controller keeps it in its live view, stores it,
shows it and judges rollout gates on it.

The edge server's core produces `ModelTelemetry` (so it imports no protobuf code from here). On
the wire the record travels as `edgefleet.fleet.v1.Telemetry` (`fleet/telemetry_pb.py`); in the
controller's store, and in `fleetctl telemetry --output json`, it is this record's JSON. A
figure nobody measured is None (no temperature sensor, no GPU), never a made-up zero. Per-model
figures may be NaN (a latency before the first request), which the JSON keeps.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict
from pydantic.dataclasses import dataclass

__all__ = ["ModelTelemetry", "TelemetryRecord"]

# NaN (a figure nobody measured yet) survives the JSON round trip.
_JSON = ConfigDict(ser_json_inf_nan="constants")


@dataclass(frozen=True, config=_JSON)
class ModelTelemetry:
    """One model's figures on one device: counters since the model loaded (a reload restarts
    them), fps and latencies over a recent window."""

    name: str
    version: str
    requests: int
    errors: int
    drops: int
    fps: float
    latency_p50_ms: float
    latency_p95_ms: float


class TelemetryRecord(BaseModel):
    model_config = ConfigDict(frozen=True, **_JSON)

    # The device's clock when it sampled; the controller's when the record arrived (0 until then).
    sampled_at: float = 0.0
    received_at: float = 0.0
    # Sent late from the agent's buffer: it describes an earlier time.
    replayed: bool = False
    # Samples the agent's buffer dropped while the controller was away.
    dropped_samples: int = 0
    # Times the agent put a model that drifted from its desired version back (cumulative).
    drift_corrections: int = 0
    cpu_percent: float = math.nan
    memory_used_bytes: int = 0
    memory_total_bytes: int = 0
    temperature_c: float | None = None
    gpu_utilization_percent: float | None = None
    gpu_memory_used_bytes: int | None = None
    models: tuple[ModelTelemetry, ...] = ()

    def model(self, name: str) -> ModelTelemetry | None:
        return next((model for model in self.models if model.name == name), None)
