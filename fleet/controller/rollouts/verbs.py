"""The operator's rollout verbs: create, promote, pause, abort, roll back. Each changes the
rollout on any replica (compare-and-set on its revision, the driver wherever it runs wakes up)
and is audited as the operator's action; rollbacks are also told to the webhooks."""

from __future__ import annotations

from collections.abc import Callable

from fleet.controller.audit import AuditLog
from fleet.controller.devices import DeviceRegistry
from fleet.controller.rollouts.engine import RolloutEngine
from fleet.controller.rollouts.transitions import advance, roll_back
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import RolloutRecord, RolloutSpec, RolloutState, Verdict
from fleet.controller.store.runner import StoreRunner
from fleet.errors import Conflict, InvalidRequest, NotFound


class RolloutVerbs:
    def __init__(
        self,
        engine: RolloutEngine,
        store: StoreRunner,
        devices: DeviceRegistry,
        audit: AuditLog,
        webhook_refusal: Callable[[str], str | None] = lambda url: None,
    ) -> None:
        self._engine = engine
        # Why a rollout's own webhook URL is not an allowed target (webhooks.WebhookTargets).
        self._webhook_refusal = webhook_refusal
        self._context = engine.context
        self._queries = engine.queries
        self._store = store
        self._devices = devices
        self._audit = audit

    async def create(self, actor: str, spec: RolloutSpec) -> RolloutRecord:
        if spec.webhook_url and (refusal := self._webhook_refusal(spec.webhook_url)):
            raise InvalidRequest(refusal)
        bundle = await self._store.run(Store.get_bundle, spec.bundle_sha256)
        if bundle is None:
            raise NotFound(f"no bundle {spec.bundle_sha256}: upload it first")
        desired = await self._store.run(Store.all_desired)
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
        context = self._context

        async def change(rollout: RolloutRecord) -> None:
            if rollout.state.finished:
                raise Conflict(f"rollout {rollout.rollout_id} already {rollout.state.value}")
            wave = rollout.waves[rollout.current_wave]
            wave.verdict, wave.reason = Verdict.PASS, "promoted by the operator"
            succeeded, desired = advance(rollout)
            await context.save(rollout, desired)
            context.wake_devices([entry.device_id for entry in desired])
            if succeeded:
                await context.decided(rollout, "rollout.succeeded")

        rollout = await context.change(self._queries.get(rollout_id).rollout_id, change)
        await self._audit.record(actor, "rollout.promote", rollout=rollout.rollout_id)
        return rollout

    async def pause(self, actor: str, rollout_id: str) -> RolloutRecord:
        """Hold the rollout where it is: no verdict, no next wave, until the operator promotes
        (the current wave passes) or aborts it. A bake in progress is dropped."""
        context = self._context

        async def change(rollout: RolloutRecord) -> None:
            if rollout.state.finished:
                raise Conflict(f"rollout {rollout.rollout_id} already {rollout.state.value}")
            if rollout.state == RolloutState.PAUSED:
                return
            rollout.state = RolloutState.PAUSED
            rollout.reason = (
                f"wave {rollout.current_wave + 1} paused by the operator"  # 1-based for people
            )
            await context.save(rollout)

        rollout = await context.change(self._queries.get(rollout_id).rollout_id, change)
        await self._audit.record(actor, "rollout.pause", rollout=rollout.rollout_id)
        return rollout

    async def abort(self, actor: str, rollout_id: str, reason: str) -> RolloutRecord:
        context = self._context

        async def change(rollout: RolloutRecord) -> None:
            if rollout.state.finished:
                raise Conflict(f"rollout {rollout.rollout_id} already {rollout.state.value}")
            await roll_back(context, rollout, reason or "aborted by the operator")

        rollout = await context.change(self._queries.get(rollout_id).rollout_id, change)
        await self._audit.record(actor, "rollout.abort", rollout=rollout.rollout_id, reason=reason)
        return rollout

    async def rollback(self, actor: str, rollout_id: str) -> RolloutRecord:
        context = self._context

        async def change(rollout: RolloutRecord) -> None:
            if rollout.state == RolloutState.ROLLED_BACK:
                raise Conflict(f"rollout {rollout.rollout_id} is already rolled back")
            later = [
                other
                for other in context.rollouts.values()
                if other.model_name == rollout.model_name and other.created_at > rollout.created_at
            ]
            if later:
                latest = max(later, key=lambda other: other.created_at)
                raise Conflict(
                    f"rollout {rollout.rollout_id} ({rollout.model_name} {rollout.version}) was "
                    f"superseded by rollout {latest.rollout_id} (version {latest.version}): only "
                    "the latest rollout of a model can be rolled back; roll that one back, or pin"
                )
            await roll_back(context, rollout, "rolled back by the operator")

        rollout = await context.change(self._queries.get(rollout_id).rollout_id, change)
        await self._audit.record(actor, "rollout.rollback", rollout=rollout.rollout_id)
        return rollout
