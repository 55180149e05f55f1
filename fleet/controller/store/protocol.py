"""The controller's persistence contract and the runner its services use.

`Store` is blocking; SQLite (`sqlite_store`) and PostgreSQL (`postgres_store`) implement it.
`StoreRunner` wraps either in typed async methods that run one at a time on the store thread,
never on the event loop.

Rollout writes are guarded twice when several replicas share a store
(fleet/controller/store/pg_lease.py and fleet/controller/rollouts/engine.py have the design): a
write names the `revision` it read (compare-and-set: a replica never overwrites a change it has not
seen, `StaleRevision`), and the driver's writes carry a `Fence` (the rollout's lease and fencing
token: a leader that lost its lease cannot write, `LeaseLost`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import ParamSpec, Protocol, TypeVar

from fleet.controller.store.records import (
    AuditRecord,
    BundleRecord,
    DesiredEntry,
    DeviceRecord,
    Measurement,
    Revocation,
    RolloutRecord,
)
from fleet.errors import FleetError

P = ParamSpec("P")
T = TypeVar("T")


class LeaseLost(FleetError):
    """This holder no longer holds the lease (it expired and another holder took it)."""


class StaleRevision(FleetError):
    """The rollout changed in the store since this copy was read (another replica wrote it)."""


@dataclass(frozen=True)
class Fence:
    """A write made under lease `name`: it commits only while `holder` holds it with `token`."""

    name: str
    holder: str
    token: int


class Store(Protocol):
    def close(self) -> None: ...

    # Enrollment tokens are stored hashed; consuming one is atomic and happens once.
    def add_token(self, token_hash: str, labels: dict[str, str], expires_at: float) -> None: ...
    def consume_token(self, token_hash: str, device_id: str, now: float) -> dict[str, str]: ...

    def upsert_device(self, device: DeviceRecord) -> None: ...
    def get_device(self, device_id: str) -> DeviceRecord | None: ...
    def list_devices(self) -> list[DeviceRecord]: ...
    # Removes the device and its desired state.
    def delete_device(self, device_id: str) -> None: ...
    # Removes the device and its desired state and revokes its key, in one transaction.
    def revoke_device(self, revocation: Revocation) -> None: ...
    def revocations(self) -> list[Revocation]: ...

    def desired_for(self, device_id: str) -> list[DesiredEntry]: ...
    def all_desired(self) -> list[DesiredEntry]: ...
    def set_desired(self, entries: Sequence[DesiredEntry]) -> None: ...
    def delete_desired(self, device_id: str, model: str) -> None: ...

    def add_bundle(self, bundle: BundleRecord) -> None: ...
    def get_bundle(self, sha256: str) -> BundleRecord | None: ...
    def find_bundle(self, name: str, version: str) -> BundleRecord | None: ...
    # Any bundle of the model (the newest), or None when the controller has never seen it.
    def find_bundle_named(self, name: str) -> BundleRecord | None: ...

    # A rollout and the desired state it implies change together, in one transaction.
    # `expected_revision`: the row must still be at that revision (StaleRevision otherwise);
    # `rollout.revision` is what it becomes. `fence`: LeaseLost unless the lease is still held.
    # `measurements` and `audit`: a wave's gate figures and its verdict's audit entry, committed
    # with the verdict.
    def save_rollout(
        self,
        rollout: RolloutRecord,
        desired: Sequence[DesiredEntry] = (),
        undesired: Sequence[tuple[str, str]] = (),
        *,
        expected_revision: int | None = None,
        fence: Fence | None = None,
        measurements: Sequence[Measurement] = (),
        audit: Sequence[AuditRecord] = (),
    ) -> None: ...
    def get_rollout(self, rollout_id: str) -> RolloutRecord | None: ...
    def list_rollouts(self) -> list[RolloutRecord]: ...
    def add_measurements(self, rollout_id: str, measurements: Sequence[Measurement]) -> None: ...
    def measurements(self, rollout_id: str) -> list[Measurement]: ...

    def add_telemetry(self, rows: Sequence[tuple[str, float, str]]) -> None: ...
    def telemetry(self, device_id: str, since: float, limit: int) -> list[tuple[float, str]]: ...
    def prune_telemetry(self, before: float) -> int: ...
    # device id -> when its newest stored telemetry row was received.
    def last_telemetry(self) -> dict[str, float]: ...

    def add_audit(self, record: AuditRecord) -> None: ...
    def audit_entries(self, limit: int) -> list[AuditRecord]: ...

    # Leases (the store's clock decides expiry): the fencing token, or None if another holds it.
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> int | None: ...
    def release_lease(self, name: str, holder: str) -> None: ...
    # Holders of the unexpired leases whose name starts with `prefix`.
    def lease_holders(self, prefix: str) -> list[str]: ...
    # A fleet-wide value set once (the CA's fingerprint...): the value stored, set if absent.
    def claim(self, key: str, value: str) -> str: ...
    # Tell the other replicas (PostgreSQL NOTIFY); a store with one controller drops it.
    def publish(self, payload: str) -> None: ...


class StoreRunner:
    """The store as the controller's services use it: typed async methods, each run on one
    dedicated thread, in order, off the event loop. Works over any `Store` (SQLite, PostgreSQL).
    """

    def __init__(self, store: Store, owns_store: bool = True) -> None:
        self._store = store
        # A second runner over the same store (leases, change notes) does not close it.
        self._owns_store = owns_store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-store")

    async def _call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(function, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._owns_store:
            self._store.close()

    async def add_token(self, token_hash: str, labels: dict[str, str], expires_at: float) -> None:
        await self._call(self._store.add_token, token_hash, labels, expires_at)

    async def consume_token(self, token_hash: str, device_id: str, now: float) -> dict[str, str]:
        return await self._call(self._store.consume_token, token_hash, device_id, now)

    async def upsert_device(self, device: DeviceRecord) -> None:
        await self._call(self._store.upsert_device, device)

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        return await self._call(self._store.get_device, device_id)

    async def list_devices(self) -> list[DeviceRecord]:
        return await self._call(self._store.list_devices)

    async def delete_device(self, device_id: str) -> None:
        await self._call(self._store.delete_device, device_id)

    async def revoke_device(self, revocation: Revocation) -> None:
        await self._call(self._store.revoke_device, revocation)

    async def revocations(self) -> list[Revocation]:
        return await self._call(self._store.revocations)

    async def desired_for(self, device_id: str) -> list[DesiredEntry]:
        return await self._call(self._store.desired_for, device_id)

    async def all_desired(self) -> list[DesiredEntry]:
        return await self._call(self._store.all_desired)

    async def set_desired(self, entries: Sequence[DesiredEntry]) -> None:
        await self._call(self._store.set_desired, entries)

    async def delete_desired(self, device_id: str, model: str) -> None:
        await self._call(self._store.delete_desired, device_id, model)

    async def add_bundle(self, bundle: BundleRecord) -> None:
        await self._call(self._store.add_bundle, bundle)

    async def get_bundle(self, sha256: str) -> BundleRecord | None:
        return await self._call(self._store.get_bundle, sha256)

    async def find_bundle(self, name: str, version: str) -> BundleRecord | None:
        return await self._call(self._store.find_bundle, name, version)

    async def find_bundle_named(self, name: str) -> BundleRecord | None:
        return await self._call(self._store.find_bundle_named, name)

    async def save_rollout(
        self,
        rollout: RolloutRecord,
        desired: Sequence[DesiredEntry] = (),
        undesired: Sequence[tuple[str, str]] = (),
        *,
        expected_revision: int | None = None,
        fence: Fence | None = None,
        measurements: Sequence[Measurement] = (),
        audit: Sequence[AuditRecord] = (),
    ) -> None:
        await self._call(
            self._store.save_rollout,
            rollout,
            desired,
            undesired,
            expected_revision=expected_revision,
            fence=fence,
            measurements=measurements,
            audit=audit,
        )

    async def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        return await self._call(self._store.get_rollout, rollout_id)

    async def list_rollouts(self) -> list[RolloutRecord]:
        return await self._call(self._store.list_rollouts)

    async def add_measurements(self, rollout_id: str, measurements: Sequence[Measurement]) -> None:
        await self._call(self._store.add_measurements, rollout_id, measurements)

    async def measurements(self, rollout_id: str) -> list[Measurement]:
        return await self._call(self._store.measurements, rollout_id)

    async def add_telemetry(self, rows: Sequence[tuple[str, float, str]]) -> None:
        await self._call(self._store.add_telemetry, rows)

    async def telemetry(self, device_id: str, since: float, limit: int) -> list[tuple[float, str]]:
        return await self._call(self._store.telemetry, device_id, since, limit)

    async def prune_telemetry(self, before: float) -> int:
        return await self._call(self._store.prune_telemetry, before)

    async def last_telemetry(self) -> dict[str, float]:
        return await self._call(self._store.last_telemetry)

    async def add_audit(self, record: AuditRecord) -> None:
        await self._call(self._store.add_audit, record)

    async def audit_entries(self, limit: int) -> list[AuditRecord]:
        return await self._call(self._store.audit_entries, limit)

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> int | None:
        return await self._call(self._store.acquire_lease, name, holder, ttl_s)

    async def release_lease(self, name: str, holder: str) -> None:
        await self._call(self._store.release_lease, name, holder)

    async def lease_holders(self, prefix: str) -> list[str]:
        return await self._call(self._store.lease_holders, prefix)

    async def claim(self, key: str, value: str) -> str:
        return await self._call(self._store.claim, key, value)

    async def publish(self, payload: str) -> None:
        await self._call(self._store.publish, payload)
