"""The rollout context: what every concern of the rollout subsystem shares, and the one way a
decision is committed.

A decision is made on the in-memory record, then `save` writes it with the desired state it
implies; until the store accepts the write nothing else sees it, and if the store refuses it the
record goes back to the store's copy. Writes compare and set the rollout's `revision` (another
replica may have changed it: `StaleRevision`), and the driver's writes also carry the rollout's
lease and fencing token (a leader that lost its lease cannot write: `LeaseLost`). Every committed
change is announced to the other replicas, which re-read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from fleet.controller.live import LiveFleet
from fleet.controller.store.protocol import Fence, LeaseLost, StaleRevision, Store
from fleet.controller.store.records import (
    AuditRecord,
    DesiredEntry,
    Measurement,
    RolloutRecord,
    Verdict,
)
from fleet.controller.store.runner import StoreRunner
from fleet.errors import Conflict

# One logger for the rollout subsystem: operators (and tests) follow rollouts by its name.
logger = logging.getLogger(__package__)
# An operator action or install report that keeps meeting newer revisions gives up after this.
CAS_ATTEMPTS = 8

# A decision told to the webhooks once committed: (rollout, action, detail).
OnDecision = Callable[[RolloutRecord, str, dict[str, object]], None]


def lease_name(rollout_id: str) -> str:
    """The lease whose holder drives the rollout (fleet.controller.rollouts.leadership)."""
    return f"rollout:{rollout_id}"


def _replace(target: RolloutRecord, source: RolloutRecord) -> None:
    """Make `target` (the object drivers hold) a copy of `source`, in place."""
    fresh = source.model_copy(deep=True)
    for name in RolloutRecord.model_fields:
        setattr(target, name, getattr(fresh, name))


class RolloutContext:
    def __init__(
        self,
        store: StoreRunner,
        live: LiveFleet,
        wake_devices: Callable[[Iterable[str]], None],
        *,
        replica: str,
        announce: Callable[[str, Sequence[str], int], None] | None = None,
        on_decision: OnDecision | None = None,
    ) -> None:
        self.store = store
        self.live = live
        # Their desired state changed: their agents' streams resend it (on every replica).
        self.wake_devices = wake_devices
        self.replica = replica
        self._announce = announce or (lambda kind, ids, revision: None)
        # Told of every decision and rollback after it is committed (webhooks).
        self.on_decision = on_decision
        # Serialises decisions on the in-memory records.
        self.lock = asyncio.Lock()
        self.rollouts: dict[str, RolloutRecord] = {}
        # The last copy of each rollout the store accepted: a failed write restores it.
        self._committed: dict[str, RolloutRecord] = {}
        self._wake: dict[str, asyncio.Event] = {}
        # Fencing tokens of the rollouts this replica drives (holds the lease of).
        self.tokens: dict[str, int] = {}
        # Decisions the controller took on its own since start: "rollout.verdict:PASS", ...
        self.decisions: dict[str, int] = {}

    # the in-memory copies
    def adopt(self, fresh: RolloutRecord) -> None:
        """Take the store's copy of a rollout (in place: drivers hold the object)."""
        current = self.rollouts.get(fresh.rollout_id)
        if current is None:
            self.rollouts[fresh.rollout_id] = fresh
        else:
            _replace(current, fresh)
        self._committed[fresh.rollout_id] = fresh.model_copy(deep=True)
        self._wake.setdefault(fresh.rollout_id, asyncio.Event())

    def register(self, rollout: RolloutRecord) -> None:
        """A rollout created here, once its first write committed."""
        self.rollouts[rollout.rollout_id] = rollout
        self._wake.setdefault(rollout.rollout_id, asyncio.Event())

    def merge(self, stored: RolloutRecord) -> None:
        """Take the store's copy if it is newer than ours."""
        current = self.rollouts.get(stored.rollout_id)
        if current is None or stored.revision > current.revision:
            self.adopt(stored)

    def wake(self, rollout_id: str) -> None:
        """Wake the rollout's driver, if it waits here."""
        if (event := self._wake.get(rollout_id)) is not None:
            event.set()

    async def wait(self, rollout_id: str, seconds: float) -> None:
        """Sleep up to `seconds`, or until the rollout is woken."""
        event = self._wake.setdefault(rollout_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0)):
                await event.wait()
        event.clear()

    # committing decisions
    async def change(
        self, rollout_id: str, change: Callable[[RolloutRecord], Awaitable[object]]
    ) -> RolloutRecord:
        """Read-change-write under the lock, again from the store's copy when another replica
        wrote the rollout in between (`save` re-read it). For anyone but the driver."""
        for _ in range(CAS_ATTEMPTS):
            try:
                async with self.lock:
                    rollout = self.rollouts[rollout_id]
                    await change(rollout)
            except StaleRevision:
                continue
            self.wake(rollout_id)
            return rollout
        raise Conflict(f"rollout {rollout_id} keeps changing; try again")

    async def save(
        self,
        rollout: RolloutRecord,
        desired: Sequence[DesiredEntry] = (),
        undesired: Sequence[tuple[str, str]] = (),
        *,
        driver: bool = False,
        measurements: Sequence[Measurement] = (),
        audit: Sequence[AuditRecord] = (),
    ) -> None:
        """Commit the decision made on `rollout`. Until the store accepts it nothing else sees
        it. The write compares and sets the revision this copy was read at, and the driver's
        writes carry the lease's fencing token. If the write fails, the record goes back to the
        store's copy (another replica changed it: StaleRevision) or to the last committed copy,
        and the error propagates (the supervisor retries the driver from there)."""
        rollout_id = rollout.rollout_id
        fence = None
        if driver:
            token = self.tokens.get(rollout_id)
            if token is None:
                raise LeaseLost(f"rollout {rollout_id} is not driven by {self.replica}")
            fence = Fence(lease_name(rollout_id), self.replica, token)
        committed = self._committed.get(rollout_id)
        rollout.updated_at = time.time()
        snapshot = rollout.model_copy(deep=True)
        snapshot.revision = (committed.revision if committed else rollout.revision) + 1
        try:
            await self.store.run(
                Store.save_rollout,
                snapshot,
                desired,
                undesired,
                expected_revision=committed.revision if committed else None,
                fence=fence,
                measurements=measurements,
                audit=audit,
            )
        except (StaleRevision, LeaseLost):
            fresh = await self.store.run(Store.get_rollout, rollout_id)
            if fresh is not None:
                self.adopt(fresh)
            raise
        except BaseException:
            if committed is not None:
                _replace(rollout, committed)
            raise
        rollout.revision = snapshot.revision
        self._committed[rollout_id] = snapshot
        self._announce("rollout", [rollout_id], snapshot.revision)

    async def decided(
        self, rollout: RolloutRecord, action: str, audited: bool = False, **detail: object
    ) -> None:
        """What the controller decided on its own: in its log, its audit log (unless `audited`
        in the write that committed it), its metrics and (once committed) its webhooks."""
        key = action + (f":{detail['verdict']}" if "verdict" in detail else "")
        self.decisions[key] = self.decisions.get(key, 0) + 1
        verdict = detail.get("verdict")
        bad = action in ("rollout.paused", "rollout.rolled-back") or verdict not in (
            None,
            Verdict.PASS.value,
        )
        logger.log(
            logging.WARNING if bad else logging.INFO,
            "rollout %s (%s %s): %s %s",
            rollout.rollout_id, rollout.model_name, rollout.version, action, detail,
        )  # fmt: skip
        record = AuditRecord(
            at=time.time(),
            actor="controller",
            action=action,
            detail={"rollout": rollout.rollout_id, **detail},
        )
        if not audited:
            await self.store.run(Store.add_audit, record)
        if self.on_decision is not None:
            self.on_decision(rollout, action, detail)
