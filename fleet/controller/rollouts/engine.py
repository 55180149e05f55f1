"""The rollout engine: the rollout subsystem assembled, and the one place a rollout starts.

Each concern has its own module, all working on one `RolloutContext` (context.py: the records,
the lock, how a decision commits): who reaches which wave (cohorts.py), measuring a bake
(windows.py) and judging it (gates.py), the wave driver (driver.py), which replica drives which
rollout (leadership.py), what agents and pins tell the rollouts (signals.py), reading them
(queries.py), and the operator's verbs with their audit (verbs.py, built over this engine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from fleet.controller.live import LiveFleet
from fleet.controller.rollouts.cohorts import plan, validate_spec
from fleet.controller.rollouts.context import OnDecision, RolloutContext
from fleet.controller.rollouts.driver import WaveDriver
from fleet.controller.rollouts.gates import cohort_figures
from fleet.controller.rollouts.leadership import Leadership
from fleet.controller.rollouts.queries import RolloutQueries
from fleet.controller.rollouts.signals import RolloutSignals
from fleet.controller.rollouts.windows import device_windows
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import (
    BundleRecord,
    DesiredEntry,
    DeviceRecord,
    RolloutRecord,
    RolloutSpec,
)
from fleet.controller.store.runner import StoreRunner
from fleet.errors import Conflict


class RolloutEngine:
    def __init__(
        self,
        store: StoreRunner,
        live: LiveFleet,
        wake_devices: Callable[[Iterable[str]], None],
        tick_s: float,
        *,
        replica: str = "local",
        lease_ttl_s: float = 10.0,
        announce: Callable[[str, Sequence[str], int], None] | None = None,
        on_decision: OnDecision | None = None,
        leases: StoreRunner | None = None,
    ) -> None:
        self.context = RolloutContext(
            store, live, wake_devices, replica=replica, announce=announce, on_decision=on_decision
        )
        self.queries = RolloutQueries(self.context)
        self.signals = RolloutSignals(self.context, self.queries)
        self.leadership = Leadership(
            self.context,
            WaveDriver(self.context, tick_s),
            leases or store,
            lease_ttl_s=lease_ttl_s,
            tick_s=tick_s,
        )

    async def start(self) -> None:
        for rollout in await self.context.store.run(Store.list_rollouts):
            self.context.adopt(rollout)
        await self.leadership.start()

    async def stop(self) -> None:
        await self.signals.stop()
        await self.leadership.stop()

    async def create(
        self,
        spec: RolloutSpec,
        bundle: BundleRecord,
        devices: Sequence[DeviceRecord],
        desired: Sequence[DesiredEntry],
    ) -> RolloutRecord:
        """Start a rollout of `bundle` over `devices` (with their `desired` state); this replica
        drives it unless another one takes its lease first."""
        validate_spec(spec)
        context = self.context
        async with context.lock:
            for other in self.queries.unfinished(bundle.name):
                raise Conflict(
                    f"rollout {other.rollout_id} of {bundle.name} is still {other.state.value}"
                )
            rollout = plan(spec, bundle, devices, desired)
            # The pre-rollout baseline: the same devices on the old version over the last bake
            # length. Waves judge relative gates against it when too few devices are left on
            # the old version (the last wave, a single 100% step, a small fleet).
            since = asyncio.get_running_loop().time() - spec.bake_s
            before = device_windows(context.live, rollout, rollout.eligible, since, False)
            if before:
                rollout.baseline = cohort_figures(before)
            await context.save(rollout)
            context.register(rollout)
        await self.leadership.lead(rollout.rollout_id)
        return rollout

    # what callers without a part of their own read (the tests, the wiring)
    def get(self, rollout_id: str) -> RolloutRecord:
        return self.queries.get(rollout_id)

    def list_rollouts(self) -> list[RolloutRecord]:
        return self.queries.list_rollouts()

    @property
    def driver_failures(self) -> int:
        return self.leadership.driver_failures
