"""Which replica drives which rollout: one lease per unfinished rollout (`rollout:<id>`, in the
store's clock), and a supervised driver task for each lease held here.

Every replica tries to take or renew the lease of every unfinished rollout each third of the
lease time, so when the driving replica dies another takes over within one lease time and
re-reads the rollout from the store; a lease renewed with a new fencing token means it was lost
in between, and whatever the old driver did under the old token must not go on. The driver's
writes carry the token (`RolloutContext.save(driver=True)`): a leader that was paused past its
lease cannot write after waking, so no wave is judged twice. A single controller (SQLite) takes
every lease at once and keeps it.

A driver that dies is logged, counted and restarted with backoff; one that met a newer revision
(an operator's change on another replica) carries on at once from the store's copy.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fleet.controller.rollouts.context import RolloutContext, lease_name
from fleet.controller.rollouts.driver import WaveDriver
from fleet.controller.store.protocol import LeaseLost, StaleRevision, Store
from fleet.controller.store.records import AuditRecord
from fleet.controller.store.runner import StoreRunner

logger = logging.getLogger(__package__)


class Leadership:
    def __init__(
        self,
        context: RolloutContext,
        driver: WaveDriver,
        leases: StoreRunner,
        *,
        lease_ttl_s: float,
        tick_s: float,
    ) -> None:
        self._context = context
        self._driver = driver
        # Lease renewals on their own store thread: they must not queue behind a reconnect
        # storm's thousands of store calls (a late renewal loses the lease).
        self._leases = leases
        self._lease_ttl_s = lease_ttl_s
        self._tick_s = tick_s
        self._leader: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._restarts: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Leases taken over from another replica (or after this one lost its own), lost, and
        # failed lease rounds (the store away); driver crashes (a store error, a bug), each
        # logged and retried: metrics.
        self.takeovers = 0
        self.leases_lost = 0
        self.lease_round_failures = 0
        self.driver_failures = 0

    async def start(self) -> None:
        await self.lead_round()
        self._leader = asyncio.create_task(self._lead_forever(), name="rollout-leases")

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._tasks.values(), *self._restarts]
        if self._leader is not None:
            tasks.append(self._leader)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        # A clean stop hands the leases over now instead of after they expire.
        tokens = self._context.tokens
        for rollout_id in list(tokens):
            try:
                await self._release(rollout_id)
            except Exception:
                logger.warning("could not release the lease of rollout %s", rollout_id)
        tokens.clear()

    def driving(self, rollout_id: str) -> bool:
        return rollout_id in self._context.tokens

    def driven(self) -> list[str]:
        return sorted(self._context.tokens)

    async def _release(self, rollout_id: str) -> None:
        await self._leases.run(Store.release_lease, lease_name(rollout_id), self._context.replica)

    async def _lead_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ttl_s / 3)
            try:
                await self.lead_round()
            except Exception:
                self.lease_round_failures += 1
                logger.exception("renewing rollout leases failed; retrying")

    async def lead_round(self) -> None:
        """Take or renew the lease of every unfinished rollout; drive those held, stop driving
        those lost. Also picks up rollouts other replicas created."""
        context = self._context
        for stored in await self._leases.run(Store.list_rollouts):
            context.merge(stored)
        for rollout_id, rollout in list(context.rollouts.items()):
            if rollout.state.finished:
                if context.tokens.pop(rollout_id, None) is not None:
                    await self._release(rollout_id)
                continue
            await self.lead(rollout_id)

    async def lead(self, rollout_id: str) -> None:
        """Take or renew the rollout's lease; drive it here while it is held."""
        context = self._context
        token = await self._leases.run(
            Store.acquire_lease, lease_name(rollout_id), context.replica, self._lease_ttl_s
        )
        held = context.tokens.get(rollout_id)
        if token == held:
            return
        if held is not None:
            self._lost(rollout_id, f"lease renewed with a new token {token}" if token else "")
        if token is None:
            return
        # Driving from what the store holds now, not from this replica's copy.
        async with context.lock:
            fresh = await context.store.run(Store.get_rollout, rollout_id)
            if fresh is None:
                return
            context.adopt(fresh)
            context.tokens[rollout_id] = token
        if token > 1:
            self.takeovers += 1
            # In the audit log too: the dashboard shows who took over a rollout, and when.
            takeover = AuditRecord(
                at=time.time(),
                actor=f"controller:{context.replica}",
                action="rollout.takeover",
                detail={"rollout": rollout_id, "fencing_token": token},
            )
            try:
                await context.store.run(Store.add_audit, takeover)
            except Exception:
                logger.warning("could not audit the takeover of rollout %s", rollout_id)
        logger.info(
            "rollout %s: driving it here (%s, fencing token %d)",
            rollout_id, context.replica, token,
        )  # fmt: skip
        if rollout_id not in self._tasks:
            self._spawn(rollout_id)

    async def refresh(self, rollout_id: str, revision: int = 0) -> None:
        """Another replica changed the rollout: re-read it, and wake its driver if it is here."""
        context = self._context
        current = context.rollouts.get(rollout_id)
        if current is not None and revision and current.revision >= revision:
            return
        async with context.lock:
            fresh = await context.store.run(Store.get_rollout, rollout_id)
            if fresh is not None:
                context.merge(fresh)
        context.wake(rollout_id)
        if fresh is not None and not fresh.state.finished and rollout_id not in context.tokens:
            # A new rollout made elsewhere: try for its lease now, not at the next round.
            await self.lead(rollout_id)

    def _lost(self, rollout_id: str, why: str = "") -> None:
        """Stop driving: another replica holds the lease now (or will)."""
        if self._context.tokens.pop(rollout_id, None) is None:
            return
        self.leases_lost += 1
        logger.warning(
            "rollout %s: lost its lease%s; another replica drives it",
            rollout_id, f" ({why})" if why else "",
        )  # fmt: skip
        task = self._tasks.pop(rollout_id, None)
        if task is not None:
            task.cancel()

    # supervision
    def _spawn(self, rollout_id: str) -> None:
        task = asyncio.create_task(self._drive(rollout_id), name=f"rollout-{rollout_id}")
        self._tasks[rollout_id] = task
        task.add_done_callback(lambda done: self._driver_done(rollout_id, done))

    async def _drive(self, rollout_id: str) -> None:
        await self._driver.drive(rollout_id)
        # Nothing left to drive: hand the lease back now.
        if self._context.tokens.pop(rollout_id, None) is not None:
            await self._release(rollout_id)

    def _driver_done(self, rollout_id: str, task: asyncio.Task[None]) -> None:
        """A driver that died is logged, counted and restarted with backoff."""
        if self._tasks.get(rollout_id) is task:
            del self._tasks[rollout_id]
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        if error is None:
            self._failures.pop(rollout_id, None)
            return
        if isinstance(error, LeaseLost):
            self._lost(rollout_id, "a fenced write was refused")
            return
        if isinstance(error, StaleRevision):
            # Another replica changed the rollout (an operator, an install report); the copy
            # was re-read: carry on from it at once.
            if rollout_id in self._context.tokens and rollout_id not in self._tasks:
                self._spawn(rollout_id)
            return
        self.driver_failures += 1
        failures = self._failures[rollout_id] = self._failures.get(rollout_id, 0) + 1
        delay = min(self._tick_s * 2**failures, 30.0)
        logger.error(
            "rollout %s: driver failed (%d in a row); restarting in %.1fs",
            rollout_id, failures, delay, exc_info=error,
        )  # fmt: skip
        restart = asyncio.create_task(self._restart(rollout_id, delay))
        self._restarts.add(restart)
        restart.add_done_callback(self._restarts.discard)

    async def _restart(self, rollout_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        driving = rollout_id in self._context.tokens
        if driving and not self._stopping and rollout_id not in self._tasks:
            self._spawn(rollout_id)
