"""Telemetry from agents: the live view (for gates and the dashboard) at once, the durable
rows in the store in batches. Rows leave the buffer only once the store has them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from prometheus_client import CollectorRegistry, Histogram

from fleet.controller.devices import DeviceRegistry
from fleet.controller.live import LiveFleet, TelemetrySample
from fleet.controller.rollouts.signals import RolloutSignals
from fleet.controller.store.protocol import Store
from fleet.controller.store.runner import StoreRunner

logger = logging.getLogger(__name__)
PRUNE_EVERY_S = 60.0


class TelemetryService:
    def __init__(
        self,
        store: StoreRunner,
        live: LiveFleet,
        devices: DeviceRegistry,
        rollouts: RolloutSignals,
        registry: CollectorRegistry,
        *,
        buffer_rows: int,
        flush_s: float,
        retention_s: float,
    ) -> None:
        self._store = store
        self._live = live
        self._devices = devices
        self._rollouts = rollouts
        self._flush_s = flush_s
        self._retention_s = retention_s
        # (sequence, device, received at, document): rows leave only once the store has them.
        self._pending_rows: deque[tuple[int, str, float, str]] = deque(maxlen=buffer_rows)
        self._row_sequence = 0
        self._flush_lock = asyncio.Lock()
        self.rows_dropped = 0
        self._task: asyncio.Task[None] | None = None
        self.handling_seconds = Histogram(
            "edgefleet_controller_telemetry_handling_seconds",
            "Time to handle one telemetry heartbeat from an agent",
            buckets=(2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2, 0.1),
            registry=registry,
        )

    @property
    def rows_pending(self) -> int:
        return len(self._pending_rows)

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="telemetry-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._write_pending()

    def record(self, device_id: str, sample: TelemetrySample) -> None:
        """Record one sample; cheap and synchronous, it runs for every heartbeat of the fleet."""
        self._live.record(device_id, sample)
        if len(self._pending_rows) == self._pending_rows.maxlen:
            self.rows_dropped += 1
        self._row_sequence += 1
        record = sample.record
        self._pending_rows.append(
            (self._row_sequence, device_id, record.received_at, record.model_dump_json())
        )
        for model in record.models:
            self._devices.active_seen(device_id, model.name, model.version)
            self._rollouts.active_version_seen(device_id, model.name, model.version)

    async def history(self, device_id: str, since_s: float, limit: int) -> list[tuple[float, str]]:
        self._devices.get(device_id)
        await self._write_pending()
        since = time.time() - since_s if since_s > 0 else 0.0
        return await self._store.run(Store.telemetry, device_id, since, limit or 1000)

    async def _flush_forever(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self._write_pending()
                now = time.time()
                if now - last_prune > PRUNE_EVERY_S:
                    last_prune = now
                    await self._store.run(Store.prune_telemetry, now - self._retention_s)
            except Exception:
                logger.exception("writing telemetry to the store failed; will retry")

    async def _write_pending(self) -> None:
        if not self._pending_rows:
            return
        async with self._flush_lock:
            batch = list(self._pending_rows)
            if not batch:
                return
            rows = [(device_id, at, document) for _, device_id, at, document in batch]
            # A failed write raises here and leaves every row in the buffer for the next flush.
            await self._store.run(Store.add_telemetry, rows)
            written = batch[-1][0]
            while self._pending_rows and self._pending_rows[0][0] <= written:
                self._pending_rows.popleft()
