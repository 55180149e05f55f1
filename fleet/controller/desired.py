"""Desired state per device: what agents are told to run, operator pins (which win over every
rollout), and the install results agents report back."""

from __future__ import annotations

import logging

from fleet.controller.audit import AuditLog
from fleet.controller.devices import DeviceRegistry, DeviceView
from fleet.controller.live import LiveFleet
from fleet.controller.rollouts.signals import RolloutSignals
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import PIN_SOURCE, DesiredEntry
from fleet.controller.store.runner import StoreRunner
from fleet.errors import InvalidRequest, NotFound

logger = logging.getLogger(__name__)


class DesiredState:
    def __init__(
        self,
        store: StoreRunner,
        devices: DeviceRegistry,
        rollouts: RolloutSignals,
        live: LiveFleet,
        audit: AuditLog,
    ) -> None:
        self._store = store
        self._devices = devices
        self._rollouts = rollouts
        self._live = live
        self._audit = audit

    async def for_device(self, device_id: str) -> list[DesiredEntry]:
        return await self._store.run(Store.desired_for, device_id)

    async def install_result(
        self,
        device_id: str,
        model: str,
        version: str,
        error: str,
        active_version: str,
        bundle_sha256: str = "",
    ) -> None:
        if not await self._devices.active_reported(device_id, model, active_version):
            return
        for entry in await self.for_device(device_id):
            if entry.model == model and entry.version == version and entry.last_error != error:
                updated = entry.model_copy(update={"last_error": error})
                await self._store.run(Store.set_desired, [updated])
        await self._rollouts.install_reported(device_id, model, version, error, bundle_sha256)
        if error:
            logger.warning(
                "device %s failed to install %s/%s: %s", device_id, model, version, error
            )

    async def pin(self, actor: str, device_id: str, model: str, version: str) -> DeviceView:
        self._devices.get(device_id)
        # Replicas: what the device last said may have reached another replica.
        await self._devices.refresh()
        device = self._devices.get(device_id)
        if not model:
            raise InvalidRequest("pin needs a model name")
        if not version:
            await self._store.run(Store.delete_desired, device_id, model)
        else:
            bundle = await self._store.run(Store.find_bundle, model, version)
            # A pin must name something the device can run: a version the controller holds a
            # bundle for, or the one the device serves right now.
            running = device.active_versions.get(model)
            if bundle is None and running != version:
                known = running is not None or any(
                    model in other.active_versions for other in self._devices.records()
                )
                if not known and not await self._store.run(Store.find_bundle_named, model):
                    raise NotFound(f"no model {model!r}: no bundle and no device runs it")
                raise NotFound(
                    f"no bundle for {model} version {version} and {device_id} does not run it:"
                    " upload the bundle first"
                )
            entry = DesiredEntry(
                device_id=device_id,
                model=model,
                version=version,
                bundle_sha256=bundle.sha256 if bundle else "",
                bundle_size=bundle.size if bundle else 0,
                source=PIN_SOURCE,
            )
            await self._store.run(Store.set_desired, [entry])
            await self._rollouts.pinned(device_id, model)
        await self._audit.record(
            actor, "device.pin", device=device_id, model=model, version=version
        )
        self._live.wake([device_id])
        return await self._devices.view(device_id)
