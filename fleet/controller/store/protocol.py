"""The controller's persistence contract, typed once here.

`Store` is blocking; SQLite (sqlite.py) and PostgreSQL (postgres.py) implement it, both calling
the business rules they share (rules.py). The controller's services call it through
`StoreRunner` (runner.py), on the store thread, never on the event loop.

Rollout writes are guarded twice when several replicas share a store
(fleet/controller/store/pg_lease.py and fleet/controller/rollouts/ have the design): a write names
the `revision` it read (compare-and-set: a replica never overwrites a change it has not seen,
`StaleRevision`), and the driver's writes carry a `Fence` (the rollout's lease and fencing token:
a leader that lost its lease cannot write, `LeaseLost`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
    # Every device's rows received at or after `since` (device, received at, document), oldest
    # first: how a replica follows the devices connected to the others.
    def recent_telemetry(self, since: float) -> list[tuple[str, float, str]]: ...

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
