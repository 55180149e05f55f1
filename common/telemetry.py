"""The telemetry record a device sends every interval, spelled once for everyone who touches it:
the fleet agent and the simulator build it, the controller keeps it in its live view, stores it,
shows it and judges rollout gates on it.

On the wire it travels as `edgefleet.fleet.v1.Telemetry` (`telemetry_to_pb`, `telemetry_from_pb`);
in the controller's store, and in `fleetctl telemetry --output json`, it is this record's JSON. A
figure nobody measured is None (no temperature sensor, no GPU), never a made-up zero. Per-model
figures may be NaN (a latency before the first request), which the JSON keeps.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict
from pydantic.dataclasses import dataclass

from protos.edgefleet.fleet.v1 import agent_pb2

__all__ = ["ModelTelemetry", "TelemetryRecord", "telemetry_from_pb", "telemetry_to_pb"]

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


def telemetry_to_pb(record: TelemetryRecord) -> agent_pb2.Telemetry:
    has_gpu = record.gpu_utilization_percent is not None
    message = agent_pb2.Telemetry(
        system=agent_pb2.SystemTelemetry(
            cpu_percent=record.cpu_percent,
            memory_used_bytes=record.memory_used_bytes,
            memory_total_bytes=record.memory_total_bytes,
            temperature_c=math.nan if record.temperature_c is None else record.temperature_c,
            has_gpu=has_gpu,
            gpu_utilization_percent=record.gpu_utilization_percent or 0.0,
            gpu_memory_used_bytes=record.gpu_memory_used_bytes or 0,
        ),
        models=[
            agent_pb2.ModelTelemetry(
                name=model.name,
                active_version=model.version,
                requests=model.requests,
                errors=model.errors,
                drops=model.drops,
                fps=model.fps,
                latency_p50_ms=model.latency_p50_ms,
                latency_p95_ms=model.latency_p95_ms,
            )
            for model in record.models
        ],
        dropped_samples=record.dropped_samples,
        replayed=record.replayed,
        drift_corrections=record.drift_corrections,
    )
    message.sampled_at.FromNanoseconds(int(record.sampled_at * 1e9))
    return message


def telemetry_from_pb(message: agent_pb2.Telemetry, received_at: float) -> TelemetryRecord:
    system = message.system
    return TelemetryRecord(
        sampled_at=message.sampled_at.ToNanoseconds() / 1e9,
        received_at=received_at,
        replayed=message.replayed,
        dropped_samples=message.dropped_samples,
        drift_corrections=message.drift_corrections,
        cpu_percent=system.cpu_percent,
        memory_used_bytes=system.memory_used_bytes,
        memory_total_bytes=system.memory_total_bytes,
        temperature_c=None if math.isnan(system.temperature_c) else system.temperature_c,
        gpu_utilization_percent=system.gpu_utilization_percent if system.has_gpu else None,
        gpu_memory_used_bytes=system.gpu_memory_used_bytes if system.has_gpu else None,
        models=tuple(
            ModelTelemetry(
                name=model.name,
                version=model.active_version,
                requests=model.requests,
                errors=model.errors,
                drops=model.drops,
                fps=model.fps,
                latency_p50_ms=model.latency_p50_ms,
                latency_p95_ms=model.latency_p95_ms,
            )
            for model in message.models
        ),
    )
