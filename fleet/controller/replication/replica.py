"""This replica's membership of a fleet shared by several controllers on one PostgreSQL.

- What this replica changes it announces (`announce`, published in order by the change feed's
  `Announcer`): devices enrolled or removed, rollouts written, desired state changed, and which
  devices are connected here.
- Which devices are connected to another replica, as those replicas announced it, so every
  replica shows them online (`online_elsewhere`; the inbound handler keeps it, see inbound.py).
- Each replica holds a lease `replica:<name>` while it lives; the devices another replica said
  were connected to it stop counting as online once its lease expires (it died without a word).
- Notes are hints: a device whose telemetry keeps reaching the store since it last left a
  replica is connected somewhere even if the note saying so was lost (devices.py, `online`).

One controller on SQLite has nobody to tell: `enabled` is False and announcing does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from fleet.controller.replication.changefeed import Announcer
from fleet.controller.store.protocol import Store
from fleet.controller.store.runner import StoreRunner

logger = logging.getLogger(__name__)


class Replica:
    def __init__(
        self, store: StoreRunner, name: str, enabled: bool, lease_ttl_s: float = 10.0
    ) -> None:
        self._store = store
        self.name = name
        self.enabled = enabled
        self._lease_ttl_s = lease_ttl_s
        self._lease = f"replica:{name}"
        self._alive: asyncio.Task[None] | None = None
        self.announcer = Announcer(self._publish, name) if enabled else None
        # Devices connected to another replica, and which one.
        self._elsewhere: dict[str, str] = {}
        # When (wall clock) another replica last said a device left it.
        self._left: dict[str, float] = {}
        # Telemetry stored before this replica started proves nothing about presence now
        # (a previous run of this replica may have written it): the roll call answers for it.
        self._started = time.time()

    async def _publish(self, payload: str) -> None:
        await self._store.run(Store.publish, payload)

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
                await self._store.run(Store.release_lease, self._lease, self.name)
            except Exception:
                logger.warning("could not release this replica's lease")
        if self.announcer is not None:
            await self.announcer.stop()

    async def _stay_alive(self) -> None:
        """Renew this replica's lease; forget the devices of replicas whose lease expired."""
        while True:
            try:
                ttl_s = self._lease_ttl_s
                await self._store.run(Store.acquire_lease, self._lease, self.name, ttl_s)
                alive = set(await self._store.run(Store.lease_holders, "replica:"))
                for device_id, origin in list(self._elsewhere.items()):
                    if origin not in alive:
                        del self._elsewhere[device_id]
            except Exception:
                logger.warning("renewing this replica's lease failed; retrying", exc_info=True)
            await asyncio.sleep(self._lease_ttl_s / 3)

    def announce(self, kind: str, ids: Sequence[str], revision: int = 0) -> None:
        """Tell the other replicas (nobody to tell on SQLite)."""
        if self.announcer is not None:
            self.announcer.post(kind, ids, revision)

    def online_elsewhere(self, device_id: str) -> bool:
        return device_id in self._elsewhere

    def connected_elsewhere(self, origin: str, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            self._elsewhere[device_id] = origin

    def disconnected_elsewhere(self, origin: str, device_ids: Iterable[str]) -> None:
        now = time.time()
        for device_id in device_ids:
            self._left[device_id] = now
            if self._elsewhere.get(device_id) == origin:
                del self._elsewhere[device_id]

    def left_at(self, device_id: str) -> float:
        """When another replica last said the device left it (else when this one started)."""
        return self._left.get(device_id, self._started)
