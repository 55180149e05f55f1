"""What this replica does with the other replicas' changes (notes from the change feed):

- `desired` (device ids): wake the agent streams connected here, so a pin or a wave made on
  another replica reaches its device within seconds;
- `device` (device ids): re-read the devices enrolled or removed elsewhere;
- `rollout` (one id and its revision): re-read the rollout and wake its driver;
- `online` / `offline` (device ids): which devices are connected to another replica.

A replica that missed notes (its feed reconnected) re-reads everything (`resync`).
"""

from __future__ import annotations

from fleet.controller.devices import DeviceRegistry
from fleet.controller.live import LiveFleet
from fleet.controller.replication.changefeed import Change
from fleet.controller.replication.replica import Replica
from fleet.controller.rollouts.engine import RolloutEngine


class InboundChanges:
    def __init__(
        self, replica: Replica, live: LiveFleet, devices: DeviceRegistry, engine: RolloutEngine
    ) -> None:
        self._replica = replica
        self._live = live
        self._devices = devices
        self._engine = engine

    async def on_change(self, change: Change) -> None:
        if change.kind == "desired":
            self._live.notify(change.ids)
        elif change.kind == "online":
            self._replica.connected_elsewhere(change.origin, change.ids)
        elif change.kind == "offline":
            self._replica.disconnected_elsewhere(change.origin, change.ids)
        elif change.kind == "device":
            for device_id in change.ids:
                await self._devices.reload(device_id)
        elif change.kind == "rollout":
            for rollout_id in change.ids:
                await self._engine.leadership.refresh(rollout_id, change.revision)

    async def resync(self) -> None:
        """After missing notes (the feed reconnected): re-read devices and rollouts, resend every
        connected device its desired state, and tell the others who is connected here."""
        await self._devices.reload_all()
        for rollout in self._engine.list_rollouts():
            await self._engine.leadership.refresh(rollout.rollout_id)
        here = self._live.sessions()
        self._live.notify(here)
        self._replica.announce("online", here)
