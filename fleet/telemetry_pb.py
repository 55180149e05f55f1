"""The telemetry record (`common.telemetry`) on the wire, `edgefleet.fleet.v1.Telemetry`, in
both directions: the agent and the simulator send it, the controller receives it."""

from __future__ import annotations

import math

from common.telemetry import ModelTelemetry, TelemetryRecord
from protos.edgefleet.fleet.v1 import agent_pb2

__all__ = ["telemetry_from_pb", "telemetry_to_pb"]


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
