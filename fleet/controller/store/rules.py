"""The store's business rules, written once. SQLite (sqlite.py) and PostgreSQL (postgres.py,
pg_lease.py) call them inside one of their transactions and supply only the reads and writes
whose SQL differs between the dialects (the `...Rows` protocols below); a rule never knows which
database runs it.

- An enrollment token is consumed once, before it expires, and only if it exists.
- A lease is free, expired, or held; taking a free or expired one bumps its fencing token,
  renewing one's own keeps it. "Expired" is judged by the store's clock, never a replica's.
- A fenced write commits only while its holder still holds the lease with that token, checked
  first in the write's own transaction.
- A rollout write compares and sets the revision it read.
- Pins always win: a rollout never overwrites or removes a pinned desired-state entry, even one
  pinned a moment ago, after the rollout read the desired state.
- A removed device takes its desired state with it; revoking also records the key.
- A claimed value is set once; later claims get the first value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fleet.controller.store.protocol import Fence, LeaseLost, StaleRevision
from fleet.controller.store.records import (
    PIN_SOURCE,
    AuditRecord,
    DesiredEntry,
    Measurement,
    Revocation,
    RolloutRecord,
)
from fleet.errors import PermissionDenied


@dataclass(frozen=True)
class TokenRow:
    labels_json: str
    expires_at: float
    used_by: str | None


@dataclass(frozen=True)
class LeaseRow:
    holder: str
    token: int
    # Unexpired by the store's clock.
    live: bool


class TokenRows(Protocol):
    # The token's row, locked against another transaction consuming it.
    def token(self, token_hash: str) -> TokenRow | None: ...
    def use_token(self, token_hash: str, device_id: str, now: float) -> None: ...


class LeaseRows(Protocol):
    # The lease's row, locked: `exclusive` to change it, shared to write under it.
    def lease(self, name: str, *, exclusive: bool) -> LeaseRow | None: ...
    # Write the lease (`exists`: its row was read); False if a row appeared meanwhile.
    def put_lease(self, name: str, holder: str, token: int, ttl_s: float, exists: bool) -> bool: ...


class RolloutRows(LeaseRows, Protocol):
    def put_rollout(self, rollout: RolloutRecord) -> None: ...
    # Replace the rollout only if it is still at `revision`; whether it was.
    def replace_rollout(self, rollout: RolloutRecord, revision: int) -> bool: ...
    def add_measurements(self, rollout_id: str, measurements: Sequence[Measurement]) -> None: ...
    def add_audit(self, records: Sequence[AuditRecord]) -> None: ...
    # (device, model) of every entry whose source is `source`, locked until commit.
    def desired_from(self, source: str) -> set[tuple[str, str]]: ...
    def write_desired(self, entries: Sequence[DesiredEntry]) -> None: ...
    def delete_desired(self, pairs: Sequence[tuple[str, str]]) -> None: ...


class DeviceRows(Protocol):
    def delete_device(self, device_id: str) -> None: ...
    def delete_desired_of(self, device_id: str) -> None: ...
    def put_revocation(self, revocation: Revocation) -> None: ...


class ClaimRows(Protocol):
    def add_claim_if_absent(self, key: str, value: str) -> None: ...
    def claim(self, key: str) -> str | None: ...


def consume_token(rows: TokenRows, token_hash: str, device_id: str, now: float) -> dict[str, str]:
    """The token's labels, once; PermissionDenied if it is unknown, used or expired."""
    row = rows.token(token_hash)
    if row is None:
        raise PermissionDenied("unknown enrollment token")
    if row.used_by is not None:
        raise PermissionDenied("enrollment token was already used")
    if row.expires_at < now:
        raise PermissionDenied("enrollment token expired")
    rows.use_token(token_hash, device_id, now)
    labels: dict[str, str] = json.loads(row.labels_json)
    return labels


def next_token(current: LeaseRow | None, holder: str) -> int | None:
    """The fencing token `holder` gets for a lease now held as `current`, or None if another
    holder has it. A holder that renews after its lease expired gets a new token: whatever it
    started under the old one must not be finished under the new one."""
    if current is None:
        return 1
    if current.live and current.holder != holder:
        return None
    return current.token if current.live else current.token + 1


def acquire_lease(rows: LeaseRows, name: str, holder: str, ttl_s: float) -> int | None:
    """Take or renew lease `name` for `ttl_s` seconds: its fencing token, or None."""
    while True:
        current = rows.lease(name, exclusive=True)
        token = next_token(current, holder)
        if token is None:
            return None
        if rows.put_lease(name, holder, token, ttl_s, exists=current is not None):
            return token
        # Another holder created the lease after we read it: read it again.


def require_lease(rows: LeaseRows, fence: Fence) -> None:
    """LeaseLost unless `fence.holder` still holds lease `fence.name` with `fence.token`. The
    row stays locked (shared) to the end of the caller's transaction: a takeover waits for it."""
    row = rows.lease(fence.name, exclusive=False)
    if row is None or not row.live or (row.holder, row.token) != (fence.holder, fence.token):
        raise LeaseLost(
            f"lease {fence.name!r} is no longer held by {fence.holder!r} (token {fence.token})"
        )


def save_rollout(
    rows: RolloutRows,
    rollout: RolloutRecord,
    desired: Sequence[DesiredEntry],
    undesired: Sequence[tuple[str, str]],
    *,
    expected_revision: int | None,
    fence: Fence | None,
    measurements: Sequence[Measurement],
    audit: Sequence[AuditRecord],
) -> None:
    """A rollout and everything its decision implies, in the caller's one transaction (see
    `Store.save_rollout`)."""
    if fence is not None:
        # First: a takeover either committed before (refused here) or waits for this write to
        # commit (it was made under the lease).
        require_lease(rows, fence)
    if expected_revision is None:
        rows.put_rollout(rollout)
    elif not rows.replace_rollout(rollout, expected_revision):
        raise StaleRevision(
            f"rollout {rollout.rollout_id} changed since revision {expected_revision}"
        )
    rows.add_measurements(rollout.rollout_id, measurements)
    rows.add_audit(audit)
    pinned = rows.desired_from(PIN_SOURCE)
    rows.write_desired([entry for entry in desired if (entry.device_id, entry.model) not in pinned])
    rows.delete_desired([pair for pair in undesired if tuple(pair) not in pinned])


def remove_device(rows: DeviceRows, device_id: str) -> None:
    rows.delete_device(device_id)
    rows.delete_desired_of(device_id)


def revoke_device(rows: DeviceRows, revocation: Revocation) -> None:
    rows.put_revocation(revocation)
    remove_device(rows, revocation.device_id)


def claim(rows: ClaimRows, key: str, value: str) -> str:
    """The value claimed under `key`: `value` if it is the first claim."""
    rows.add_claim_if_absent(key, value)
    stored = rows.claim(key)
    return value if stored is None else stored
