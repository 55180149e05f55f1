"""Who a rollout reaches, and in which order: the eligible devices (matching the selector, not
pinned), a stable cohort order per model, and the growing prefix each wave takes."""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Sequence

from fleet.controller.devices import matches
from fleet.controller.rollouts.gates import parse_gate
from fleet.controller.store.records import (
    PIN_SOURCE,
    BundleRecord,
    DesiredEntry,
    DeviceRecord,
    PreviousVersion,
    RolloutRecord,
    RolloutSpec,
    WaveRecord,
)
from fleet.errors import InvalidRequest


def cohort_rank(model: str, device_id: str) -> str:
    """Stable order of devices for a model: waves take a growing prefix, so cohorts never
    shuffle between waves, rollouts or restarts."""
    return hashlib.sha256(f"{model}\0{device_id}".encode()).hexdigest()


def validate_steps(steps: Sequence[float]) -> None:
    if not steps:
        raise InvalidRequest("steps must not be empty")
    if any(step <= 0 or step > 100 for step in steps):
        raise InvalidRequest("every step is a percentage in (0, 100]")
    if list(steps) != sorted(set(steps)):
        raise InvalidRequest("steps must be strictly increasing")
    if steps[-1] != 100:
        raise InvalidRequest("the last step must be 100")


def validate_spec(spec: RolloutSpec) -> None:
    """InvalidRequest unless the steps and every gate make sense."""
    validate_steps(spec.steps)
    for gate in spec.gates:
        parse_gate(gate)


def plan(
    spec: RolloutSpec,
    bundle: BundleRecord,
    devices: Sequence[DeviceRecord],
    desired: Sequence[DesiredEntry],
) -> RolloutRecord:
    """A new rollout of `bundle` (its spec validated): its waves, its eligible devices in cohort
    order, and what each of them ran before (where a rollback returns it)."""
    model = bundle.name
    current = {(entry.device_id, entry.model): entry for entry in desired}
    eligible = sorted(
        (
            device.device_id
            for device in devices
            if matches(device.labels, spec.selector)
            and getattr(current.get((device.device_id, model)), "source", "") != PIN_SOURCE
        ),
        key=lambda device_id: cohort_rank(model, device_id),
    )
    if not eligible:
        raise InvalidRequest(f"no unpinned device matches the selector {spec.selector}")
    previous: dict[str, PreviousVersion] = {}
    by_id = {device.device_id: device for device in devices}
    for device_id in eligible:
        entry = current.get((device_id, model))
        if entry is not None and entry.version != bundle.version:
            previous[device_id] = PreviousVersion(
                version=entry.version,
                bundle_sha256=entry.bundle_sha256,
                bundle_size=entry.bundle_size,
            )
            continue
        active = by_id[device_id].active_versions.get(model)
        if active and active != bundle.version:
            previous[device_id] = PreviousVersion(version=active)
    now = time.time()
    return RolloutRecord(
        rollout_id=uuid.uuid4().hex[:12],
        model_name=model,
        version=bundle.version,
        bundle_size=bundle.size,
        spec=spec,
        waves=[WaveRecord(index=i, percent=step) for i, step in enumerate(spec.steps)],
        eligible=eligible,
        previous=previous,
        created_at=now,
        updated_at=now,
    )


def cohort(rollout: RolloutRecord, through_wave: int) -> list[str]:
    """The devices of waves 0..`through_wave`: the ones on the new version once they install."""
    return [device_id for wave in rollout.waves[: through_wave + 1] for device_id in wave.devices]


# The share of the fleet held back as the last wave's control cohort (at least one device).
CONTROL_PERCENT = 5.0


def control_cohort(rollout: RolloutRecord, index: int, devices: Sequence[str]) -> list[str]:
    """The devices of wave `index` held back on the old version until it is judged: only for
    the last wave (the one that leaves no device on the old version) and only when a gate is
    relative to the baseline. Judging the last wave against history (the previous wave's
    window) let machine load that moved in between roll back an identical model; a control
    cohort judged at the same time sees the same load. Taken from the end of the cohort order,
    CONTROL_PERCENT of the fleet or --min-devices, whichever is more, and never the whole
    fleet: at least one device moves before the control is judged against it."""
    if index != len(rollout.waves) - 1 or len(rollout.eligible) < 2:
        return []
    if not any(parse_gate(gate).factor is not None for gate in rollout.spec.gates):
        return []
    # --min-devices of them where the fleet allows: the control is the wave's baseline cohort.
    share = math.ceil(len(rollout.eligible) * CONTROL_PERCENT / 100)
    size = max(1, share, rollout.spec.min_devices)
    moved_before = len(rollout.eligible) - len(devices)
    size = min(size, len(devices) - (0 if moved_before else 1))
    return list(devices[len(devices) - size :]) if size > 0 else []


def wave_devices(rollout: RolloutRecord, index: int) -> list[str]:
    """The devices wave `index` adds: the prefix of its percentage, less the earlier waves'."""
    wave = rollout.waves[index]
    count = max(1, math.ceil(len(rollout.eligible) * wave.percent / 100))
    earlier = set(cohort(rollout, index - 1)) if index else set()
    return [device_id for device_id in rollout.eligible[:count] if device_id not in earlier]
