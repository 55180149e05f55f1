"""Controller records <-> fleet protobuf messages, both directions."""

from __future__ import annotations

import json
import math

from google.protobuf.timestamp_pb2 import Timestamp

from fleet.controller.devices import DeviceView
from fleet.controller.store.records import (
    AuditRecord,
    DesiredEntry,
    DeviceInstall,
    Measurement,
    RolloutRecord,
    RolloutSpec,
    Verdict,
)
from protos.edgefleet.fleet.v1 import admin_pb2, agent_pb2


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def desired_state_to_pb(
    generation: int, entries: list[DesiredEntry], telemetry_interval_s: float
) -> agent_pb2.ConnectResponse:
    return agent_pb2.ConnectResponse(
        desired_state=agent_pb2.DesiredState(
            generation=generation,
            telemetry_interval_s=telemetry_interval_s,
            models=[
                agent_pb2.DesiredModel(
                    name=entry.model,
                    version=entry.version,
                    bundle_sha256=entry.bundle_sha256,
                    bundle_size=entry.bundle_size,
                    rejected_versions=entry.rejected_versions,
                )
                for entry in entries
            ],
        )
    )


_VERDICTS = {
    None: admin_pb2.VERDICT_UNSPECIFIED,
    Verdict.PASS: admin_pb2.VERDICT_PASS,
    Verdict.FAIL: admin_pb2.VERDICT_FAIL,
    Verdict.INCONCLUSIVE: admin_pb2.VERDICT_INCONCLUSIVE,
}


def rollout_to_pb(rollout: RolloutRecord) -> admin_pb2.Rollout:
    spec = rollout.spec
    waves = []
    for wave in rollout.waves:
        statuses = [rollout.installs.get(device_id) for device_id in wave.devices]
        waves.append(
            admin_pb2.Wave(
                index=wave.index,
                percent=wave.percent,
                target_devices=len(wave.devices),
                installed=statuses.count(DeviceInstall.INSTALLED),
                failed=statuses.count(DeviceInstall.FAILED),
                timed_out=statuses.count(DeviceInstall.TIMED_OUT),
                verdict=_VERDICTS[wave.verdict],
                reason=wave.reason,
            )
        )
    return admin_pb2.Rollout(
        rollout_id=rollout.rollout_id,
        model_name=rollout.model_name,
        version=rollout.version,
        bundle_sha256=spec.bundle_sha256,
        state=f"ROLLOUT_STATE_{rollout.state.value}",
        selector=spec.selector,
        steps=spec.steps,
        bake_s=spec.bake_s,
        gates=spec.gates,
        min_devices=spec.min_devices,
        current_wave=rollout.current_wave,
        waves=waves,
        eligible_devices=len(rollout.eligible),
        reason=rollout.reason,
        created_at=timestamp(rollout.created_at),
        updated_at=timestamp(rollout.updated_at),
    )


def spec_from_pb(request: admin_pb2.CreateRolloutRequest) -> RolloutSpec:
    values: dict[str, object] = {
        "bundle_sha256": request.bundle_sha256,
        "selector": dict(request.selector),
        "steps": list(request.steps) or [100.0],
        "bake_s": request.bake_s,
        "gates": list(request.gates),
        "webhook_url": request.webhook_url,
    }
    # Zero means "the default" for every optional number.
    for name in (
        "min_devices",
        "min_requests",
        "max_install_failure_rate",
        "max_timeout_rate",
        "install_timeout_s",
    ):
        if value := getattr(request, name):
            values[name] = value
    return RolloutSpec.model_validate(values)


def measurement_to_pb(measurement: Measurement) -> admin_pb2.GateMeasurement:
    return admin_pb2.GateMeasurement(
        wave=measurement.wave,
        gate=measurement.gate,
        metric=measurement.metric,
        canary_value=measurement.canary_value,
        baseline_value=measurement.baseline_value,
        threshold=measurement.threshold,
        verdict=_VERDICTS[measurement.verdict],
        canary_devices=measurement.canary_devices,
        baseline_devices=measurement.baseline_devices,
        note=measurement.note,
        evaluated_at=timestamp(measurement.evaluated_at),
    )


def _no_reading(value: float | None) -> float:
    """NaN: how the fleet protos say a figure was not measured."""
    return math.nan if value is None else value


def install_phase_from_pb(phase: int) -> str:
    """INSTALL_PHASE_SMOKE_TEST -> "smoke test"; "" when unspecified or unknown."""
    if phase == agent_pb2.INSTALL_PHASE_UNSPECIFIED:
        return ""
    try:
        name = agent_pb2.InstallPhase.Name(phase)
    except ValueError:
        return ""
    return name.removeprefix("INSTALL_PHASE_").lower().replace("_", " ")


def device_to_pb(view: DeviceView) -> admin_pb2.Device:
    record, latest = view.record, view.latest
    desired = {entry.model: entry for entry in view.desired}
    names = sorted(set(desired) | set(record.active_versions))
    models = []
    for name in names:
        model = admin_pb2.DeviceModel(
            name=name,
            desired_version=desired[name].version if name in desired else "",
            actual_version=record.active_versions.get(name, ""),
            desired_source=desired[name].source if name in desired else "",
            last_install_error=desired[name].last_error if name in desired else "",
        )
        if latest is not None and (sample := latest.record.model(name)) is not None:
            model.fps = sample.fps
            model.latency_p50_ms = sample.latency_p50_ms
            model.latency_p95_ms = sample.latency_p95_ms
            model.requests = sample.requests
            model.errors = sample.errors
            model.drops = sample.drops
        models.append(model)
    return admin_pb2.Device(
        device_id=record.device_id,
        labels=record.labels,
        online=view.online,
        last_seen=timestamp(view.last_seen),
        models=models,
        cpu_percent=latest.record.cpu_percent if latest else 0.0,
        memory_used_bytes=latest.record.memory_used_bytes if latest else 0,
        temperature_c=_no_reading(latest.record.temperature_c if latest else None),
        dropped_samples=latest.record.dropped_samples if latest else 0,
        hardware_json=record.hardware_json,
        agent_version=record.agent_version,
    )


def audit_to_pb(record: AuditRecord) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
        at=timestamp(record.at),
        actor=record.actor,
        action=record.action,
        detail_json=json.dumps(record.detail, sort_keys=True),
    )
