"""What the rest of the controller tells the rollouts: install results agents report (on any
replica), telemetry showing a new version active, and operator pins. Each changes the rollout
with compare-and-set (`RolloutContext.change`), since the driver may run on another replica."""

from __future__ import annotations

import asyncio
import logging

from fleet.controller.rollouts.context import RolloutContext
from fleet.controller.rollouts.queries import RolloutQueries
from fleet.controller.store.records import DeviceInstall, RolloutRecord

logger = logging.getLogger(__package__)


class RolloutSignals:
    def __init__(self, context: RolloutContext, queries: RolloutQueries) -> None:
        self._context = context
        self._queries = queries
        self._confirming: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def install_reported(
        self, device_id: str, model: str, version: str, error: str, bundle_sha256: str = ""
    ) -> None:
        async def change(rollout: RolloutRecord) -> None:
            if rollout.installs.get(device_id) != DeviceInstall.PENDING:
                return
            if error:
                rollout.installs[device_id] = DeviceInstall.FAILED
                rollout.install_errors[device_id] = error
            else:
                rollout.installs[device_id] = DeviceInstall.INSTALLED
            await self._context.save(rollout)

        for rollout in self._queries.active(model, version):
            if bundle_sha256 and bundle_sha256 != rollout.spec.bundle_sha256:
                continue  # another bundle under the same version number: not this rollout's
            if rollout.installs.get(device_id) == DeviceInstall.PENDING:
                await self._context.change(rollout.rollout_id, change)

    def active_version_seen(self, device_id: str, model: str, version: str) -> None:
        """Telemetry showing the new version active counts as installed (the result message may
        have been lost in a disconnect or a controller restart). The driver checks live
        telemetry itself; a replica that does not drive the rollout records the install."""
        for rollout in self._queries.active(model, version):
            if rollout.installs.get(device_id) != DeviceInstall.PENDING:
                continue
            if rollout.rollout_id in self._context.tokens:
                self._context.wake(rollout.rollout_id)
                continue
            key = (rollout.rollout_id, device_id)
            if key in self._confirming:
                continue
            self._confirming.add(key)
            task = asyncio.create_task(self._confirm(key, model, version))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _confirm(self, key: tuple[str, str], model: str, version: str) -> None:
        try:
            await self.install_reported(key[1], model, version, "")
        except Exception:
            logger.exception("recording the install of %s on %s failed", model, key[1])
        finally:
            self._confirming.discard(key)

    async def pinned(self, device_id: str, model: str) -> None:
        """A pin takes the device out of every unfinished rollout of the model: no later wave
        installs on it and no rollback moves it."""

        async def change(rollout: RolloutRecord) -> None:
            if rollout.state.finished or device_id not in rollout.eligible:
                return
            rollout.eligible = [d for d in rollout.eligible if d != device_id]
            for wave in rollout.waves:
                wave.devices = [d for d in wave.devices if d != device_id]
            rollout.installs.pop(device_id, None)
            rollout.install_errors.pop(device_id, None)
            rollout.previous.pop(device_id, None)
            await self._context.save(rollout)

        for rollout in self._queries.unfinished(model):
            await self._context.change(rollout.rollout_id, change)
