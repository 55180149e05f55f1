"""What this replica does with the other replicas' changes (notes from the change feed):

- `desired` (device ids): wake the agent streams connected here, so a pin or a wave made on
  another replica reaches its device within seconds;
- `device` (device ids): re-read the devices enrolled or removed elsewhere;
- `rollout` (one id and its revision): re-read the rollout and wake its driver;
- `online` / `offline` (device ids): which devices are connected to another replica (and their
  records re-read: the hello they sent there);
- `phase` (device, model, version, phase): where an install stands, as its agent told the
  replica it is connected to (the dashboard shows it);
- `who` (a roll call, sent by a replica that starts or missed notes): announce the devices
  connected here, so the caller shows them online at once.

Every replica shows the same fleet: presence from the notes and the roll call (a replica that
died without a word loses its devices when its lease expires), the latest telemetry of the
devices connected elsewhere from the store (`follow_telemetry`, polled every
`telemetry_flush_s`: what the other replicas flushed). A replica that missed notes (its feed
reconnected) re-reads everything (`resync`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from common.telemetry import TelemetryRecord
from fleet.controller.devices import DeviceRegistry
from fleet.controller.live import LiveFleet, TelemetrySample
from fleet.controller.replication.changefeed import Change
from fleet.controller.replication.replica import Replica
from fleet.controller.rollouts.engine import RolloutEngine
from fleet.controller.store.protocol import Store
from fleet.controller.store.runner import StoreRunner

logger = logging.getLogger(__name__)
# A starting replica reads this much of the others' telemetry history (charts, latest figures).
FIRST_LOOKBACK_S = 60.0
# Re-read rows this far behind the newest seen: rows of one flush commit together, but two
# replicas' flushes interleave (each device's rows are taken once, newest first).
OVERLAP_S = 2.0
# Past this many ids a note's device records are re-read in one query, not one each.
RELOAD_ONE_BY_ONE = 50


class InboundChanges:
    def __init__(
        self,
        replica: Replica,
        live: LiveFleet,
        devices: DeviceRegistry,
        engine: RolloutEngine,
        store: StoreRunner | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self._replica = replica
        self._live = live
        self._devices = devices
        self._engine = engine
        self._store = store
        self._poll_s = poll_s
        self._follower: asyncio.Task[None] | None = None
        # Per device, the newest stored sample taken (received_at, the other replica's clock).
        self._taken: dict[str, float] = {}

    def start(self) -> None:
        """Replicas only: roll call, then follow the others' telemetry in the store."""
        if not self._replica.enabled:
            return
        self._replica.announce("who", [])
        if self._store is not None:
            self._follower = asyncio.create_task(self._follow_forever(), name="follow-telemetry")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None

    async def on_change(self, change: Change) -> None:
        if change.kind == "desired":
            self._live.notify(change.ids)
        elif change.kind == "online":
            self._replica.connected_elsewhere(change.origin, change.ids)
            await self._reload(change.ids)
        elif change.kind == "offline":
            self._replica.disconnected_elsewhere(change.origin, change.ids)
        elif change.kind == "phase":
            for note in change.ids:
                device_id, model, version, phase = (note.split("\t") + ["", "", ""])[:4]
                self._live.install_progress(device_id, model, version, phase, announce=False)
        elif change.kind == "who":
            here = self._live.sessions()
            if here:
                self._replica.announce("online", here)
        elif change.kind == "device":
            for device_id in change.ids:
                await self._devices.reload(device_id)
        elif change.kind == "rollout":
            for rollout_id in change.ids:
                await self._engine.leadership.refresh(rollout_id, change.revision)

    async def _reload(self, device_ids: tuple[str, ...]) -> None:
        if len(device_ids) > RELOAD_ONE_BY_ONE:
            await self._devices.refresh()
            return
        for device_id in device_ids:
            if not self._live.connected(device_id):
                await self._devices.reload(device_id)

    async def resync(self) -> None:
        """After missing notes (the feed reconnected): re-read devices and rollouts, resend every
        connected device its desired state, tell the others who is connected here and ask
        them the same."""
        await self._devices.reload_all()
        for rollout in self._engine.list_rollouts():
            await self._engine.leadership.refresh(rollout.rollout_id)
        here = self._live.sessions()
        self._live.notify(here)
        self._replica.announce("online", here)
        self._replica.announce("who", [])

    async def _follow_forever(self) -> None:
        since = time.time() - FIRST_LOOKBACK_S
        while True:
            try:
                newest = await self.follow_telemetry(since)
                since = max(since, newest - OVERLAP_S)
            except Exception:
                logger.warning("reading the other replicas' telemetry failed", exc_info=True)
            await asyncio.sleep(self._poll_s)

    async def follow_telemetry(self, since: float) -> float:
        """Take the stored samples (since `since`, wall clock) of the devices not connected
        here into the live view; return the newest `received_at` read."""
        assert self._store is not None
        rows = await self._store.run(Store.recent_telemetry, since)
        loop_now, wall_now = asyncio.get_running_loop().time(), time.time()
        newest = since
        for device_id, received_at, document in rows:
            newest = max(newest, received_at)
            # Rows this replica wrote itself (the device was connected here) are no news.
            seen = max(self._taken.get(device_id, 0.0), self._live.local_heard(device_id))
            if self._live.connected(device_id) or received_at <= seen:
                continue
            self._taken[device_id] = received_at
            try:
                record = TelemetryRecord.model_validate_json(document)
            except ValueError:
                continue
            at = loop_now - (wall_now - received_at)
            self._live.record_remote(device_id, TelemetrySample(at, record))
            for model in record.models:
                self._devices.active_seen(device_id, model.name, model.version)
        return newest
