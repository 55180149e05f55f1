"""The operator's rollout verbs (create, promote, abort, rollback, explain), audited, over the
rollout engine that drives waves on its own."""

from __future__ import annotations

from fleet.controller.audit import AuditLog
from fleet.controller.devices import DeviceRegistry
from fleet.controller.rollouts.engine import RolloutEngine
from fleet.controller.store.protocol import StoreRunner
from fleet.controller.store.records import Measurement, RolloutRecord, RolloutSpec
from fleet.errors import NotFound


class RolloutActions:
    def __init__(
        self,
        store: StoreRunner,
        engine: RolloutEngine,
        devices: DeviceRegistry,
        audit: AuditLog,
    ) -> None:
        self._store = store
        self._engine = engine
        self._devices = devices
        self._audit = audit

    def get(self, rollout_id: str) -> RolloutRecord:
        return self._engine.get(rollout_id)

    def list_rollouts(self) -> list[RolloutRecord]:
        return self._engine.list_rollouts()

    async def create(self, actor: str, spec: RolloutSpec) -> RolloutRecord:
        bundle = await self._store.get_bundle(spec.bundle_sha256)
        if bundle is None:
            raise NotFound(f"no bundle {spec.bundle_sha256}: upload it first")
        desired = await self._store.all_desired()
        await self._devices.refresh()  # replicas: labels and versions other replicas heard
        rollout = await self._engine.create(spec, bundle, self._devices.records(), desired)
        await self._audit.record(
            actor,
            "rollout.create",
            rollout=rollout.rollout_id,
            model=rollout.model_name,
            version=rollout.version,
            spec=spec.model_dump(mode="json"),
        )
        return rollout

    async def promote(self, actor: str, rollout_id: str) -> RolloutRecord:
        rollout = await self._engine.promote(rollout_id)
        await self._audit.record(actor, "rollout.promote", rollout=rollout.rollout_id)
        return rollout

    async def abort(self, actor: str, rollout_id: str, reason: str) -> RolloutRecord:
        rollout = await self._engine.abort(rollout_id, reason)
        await self._audit.record(actor, "rollout.abort", rollout=rollout.rollout_id, reason=reason)
        return rollout

    async def rollback(self, actor: str, rollout_id: str) -> RolloutRecord:
        rollout = await self._engine.rollback(rollout_id)
        await self._audit.record(actor, "rollout.rollback", rollout=rollout.rollout_id)
        return rollout

    async def explain(self, rollout_id: str) -> tuple[RolloutRecord, list[Measurement]]:
        rollout = self._engine.get(rollout_id)
        return rollout, await self._engine.measurements(rollout.rollout_id)
