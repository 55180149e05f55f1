"""The transitions that both the driver and the operator make: on to the next wave, and back to
the previous versions. The caller holds the context's lock."""

from __future__ import annotations

from collections.abc import Sequence

from fleet.controller.rollouts.context import RolloutContext
from fleet.controller.store.records import (
    AuditRecord,
    DesiredEntry,
    DeviceInstall,
    Measurement,
    RolloutRecord,
    RolloutState,
)


def desired_entry(rollout: RolloutRecord, device_id: str) -> DesiredEntry:
    """What a device of the rollout is told to run: the new version."""
    return DesiredEntry(
        device_id=device_id,
        model=rollout.model_name,
        version=rollout.version,
        bundle_sha256=rollout.spec.bundle_sha256,
        bundle_size=rollout.bundle_size,
        source=f"rollout:{rollout.rollout_id}",
    )


def advance(rollout: RolloutRecord) -> tuple[bool, list[DesiredEntry]]:
    """Move on: to the next wave, to the last wave's control cohort once that wave passed, or
    to the end. (True when the rollout succeeded, the desired state the step implies.)"""
    if rollout.current_wave + 1 >= len(rollout.waves):
        if rollout.control and not rollout.control_released:
            rollout.control_released = True
            rollout.state = RolloutState.INSTALLING
            rollout.reason = ""
            for device_id in rollout.control:
                rollout.installs[device_id] = DeviceInstall.PENDING
            return False, [desired_entry(rollout, device_id) for device_id in rollout.control]
        rollout.state = RolloutState.SUCCEEDED
        rollout.reason = "every wave passed"
        return True, []
    rollout.current_wave += 1
    rollout.state = RolloutState.INSTALLING
    rollout.reason = ""
    return False, []


async def roll_back(
    context: RolloutContext,
    rollout: RolloutRecord,
    reason: str,
    automatic: bool = False,
    decided: bool = True,
    measurements: Sequence[Measurement] = (),
    audit: Sequence[AuditRecord] = (),
) -> None:
    """Roll back: an operator's (any replica) or the driver's own (`automatic`: fenced). Every
    device the rollout touched is told its previous version, or to drop the model."""
    touched = list(rollout.installs)
    desired: list[DesiredEntry] = []
    undesired: list[tuple[str, str]] = []
    for device_id in touched:
        previous = rollout.previous.get(device_id)
        if previous is None:
            undesired.append((device_id, rollout.model_name))
            continue
        desired.append(
            DesiredEntry(
                device_id=device_id,
                model=rollout.model_name,
                version=previous.version,
                bundle_sha256=previous.bundle_sha256,
                bundle_size=previous.bundle_size,
                source=f"rollback:{rollout.rollout_id}",
                rejected_versions=[rollout.version],
            )
        )
    rollout.state = RolloutState.ROLLED_BACK
    rollout.reason = reason
    await context.save(
        rollout, desired, undesired, driver=automatic, measurements=measurements, audit=audit
    )
    context.wake_devices(touched)
    if automatic and decided:
        await context.decided(
            rollout, "rollout.rolled-back", reason=reason, devices=len(touched), automatic=True
        )
    elif not automatic and context.on_decision is not None:
        # The operator's rollback is audited as the operator's action; receivers hear of it.
        context.on_decision(
            rollout, "rollout.rolled-back", {"reason": reason, "devices": len(touched),
                                             "automatic": False},
        )  # fmt: skip
