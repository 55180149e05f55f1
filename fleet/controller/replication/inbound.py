"""This replica's part in a fleet shared by several controllers on one PostgreSQL.

- Rollouts: each is driven by the one replica holding its lease
  (fleet/controller/rollouts/engine.py).
- Changes: what a replica changes it announces (`announce`, through fleet/controller/changefeed);
  what the others announce arrives in `on_change`: wake the agent streams whose desired state
  changed (a pin or a wave made on another replica reaches its device within seconds), re-read
  devices enrolled or removed elsewhere, re-read rollouts and wake their drivers, and track
  which devices are connected to another replica (so every replica shows them online).
- A replica that missed notes re-reads everything (`resync`).
- Each replica holds a lease `replica:<name>` while it lives; the devices another replica said
  were connected to it stop counting as online once its lease expires (it died without a word).

One controller on SQLite has nobody to tell: `enabled` is False and every method is local.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from fleet.controller.live import LiveFleet
from fleet.controller.replication.changefeed import Announcer, Change
from fleet.controller.store.protocol import StoreRunner

if TYPE_CHECKING:
    from fleet.controller.devices import DeviceRegistry
    from fleet.controller.rollouts.engine import RolloutEngine

logger = logging.getLogger(__name__)


class Replication:
    def __init__(
        self, store: StoreRunner, replica: str, enabled: bool, lease_ttl_s: float = 10.0
    ) -> None:
        self._store = store
        self.replica = replica
        self.enabled = enabled
        self._lease_ttl_s = lease_ttl_s
        self._alive: asyncio.Task[None] | None = None
        self.announcer = Announcer(store.publish, replica) if enabled else None
        self.live: LiveFleet | None = None
        self._devices: DeviceRegistry | None = None
        self._engine: RolloutEngine | None = None
        # Devices connected to another replica, and which one.
        self._elsewhere: dict[str, str] = {}

    def bind(self, live: LiveFleet, devices: DeviceRegistry, engine: RolloutEngine) -> None:
        self.live, self._devices, self._engine = live, devices, engine

    def start(self) -> None:
        if self.announcer is not None:
            self.announcer.start()
            self._alive = asyncio.create_task(self._stay_alive(), name="replica-lease")

    async def stop(self) -> None:
        if self._alive is not None:
            self._alive.cancel()
            await asyncio.gather(self._alive, return_exceptions=True)
            self._alive = None
            try:
                await self._store.release_lease(f"replica:{self.replica}", self.replica)
            except Exception:
                logger.warning("could not release this replica's lease")
        if self.announcer is not None:
            await self.announcer.stop()

    async def _stay_alive(self) -> None:
        """Renew this replica's lease; forget the devices of replicas whose lease expired."""
        while True:
            try:
                await self._store.acquire_lease(
                    f"replica:{self.replica}", self.replica, self._lease_ttl_s
                )
                alive = set(await self._store.lease_holders("replica:"))
                for device_id, origin in list(self._elsewhere.items()):
                    if origin not in alive:
                        del self._elsewhere[device_id]
            except Exception:
                logger.warning("renewing this replica's lease failed; retrying", exc_info=True)
            await asyncio.sleep(self._lease_ttl_s / 3)

    # what this replica tells the others
    def announce(self, kind: str, ids: Sequence[str], revision: int = 0) -> None:
        if self.announcer is not None:
            self.announcer.post(kind, ids, revision)

    def wake_devices(self, device_ids: Iterable[str]) -> None:
        """Their desired state changed: their streams resend it, here and on every replica."""
        ids = list(device_ids)
        if self.live is not None:
            self.live.notify(ids)
        self.announce("desired", ids)

    def presence(self, device_id: str, online: bool) -> None:
        """LiveFleet's callback: a device's stream opened or closed here."""
        self.announce("online" if online else "offline", [device_id])

    def online_elsewhere(self, device_id: str) -> bool:
        return device_id in self._elsewhere

    # what the others tell this replica
    async def on_change(self, change: Change) -> None:
        assert self.live is not None and self._devices is not None and self._engine is not None
        if change.kind == "desired":
            self.live.notify(change.ids)
        elif change.kind == "online":
            for device_id in change.ids:
                self._elsewhere[device_id] = change.origin
        elif change.kind == "offline":
            for device_id in change.ids:
                if self._elsewhere.get(device_id) == change.origin:
                    del self._elsewhere[device_id]
        elif change.kind == "device":
            for device_id in change.ids:
                await self._devices.reload(device_id)
        elif change.kind == "rollout":
            for rollout_id in change.ids:
                await self._engine.refresh(rollout_id, change.revision)

    async def resync(self) -> None:
        """After missing notes (the feed reconnected): re-read devices and rollouts, resend every
        connected device its desired state, and tell the others who is connected here."""
        assert self.live is not None and self._devices is not None and self._engine is not None
        await self._devices.reload_all()
        for rollout in self._engine.list_rollouts():
            await self._engine.refresh(rollout.rollout_id)
        here = self.live.sessions()
        self.live.notify(here)
        self.announce("online", here)
