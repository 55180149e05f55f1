"""Reading rollouts: this replica's copies (kept current by leadership rounds and the other
replicas' change notes) and, for their gate measurements, the store."""

from __future__ import annotations

from fleet.controller.rollouts.context import RolloutContext
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import Measurement, RolloutRecord
from fleet.errors import NotFound


class RolloutQueries:
    def __init__(self, context: RolloutContext) -> None:
        self._context = context

    def get(self, rollout_id: str) -> RolloutRecord:
        """The rollout; the newest one when `rollout_id` is empty."""
        rollouts = self._context.rollouts
        if not rollout_id:
            if not rollouts:
                raise NotFound("no rollouts yet")
            return max(rollouts.values(), key=lambda rollout: rollout.created_at)
        rollout = rollouts.get(rollout_id)
        if rollout is None:
            raise NotFound(f"no rollout {rollout_id!r}")
        return rollout

    def list_rollouts(self) -> list[RolloutRecord]:
        return sorted(self._context.rollouts.values(), key=lambda rollout: rollout.created_at)

    async def measurements(self, rollout_id: str) -> list[Measurement]:
        return await self._context.store.run(Store.measurements, rollout_id)

    async def explain(self, rollout_id: str) -> tuple[RolloutRecord, list[Measurement]]:
        """The rollout and every gate measurement of its waves."""
        rollout = self.get(rollout_id)
        return rollout, await self.measurements(rollout.rollout_id)

    def unfinished(self, model: str) -> list[RolloutRecord]:
        return [
            rollout
            for rollout in self._context.rollouts.values()
            if rollout.model_name == model and not rollout.state.finished
        ]

    def active(self, model: str, version: str) -> list[RolloutRecord]:
        """The unfinished rollouts installing `version` of `model`."""
        return [rollout for rollout in self.unfinished(model) if rollout.version == version]
