"""SQLite (WAL) implementation of `Store`: one file in the controller's data directory.

One controller per file, but the same contract as PostgreSQL (leases, fences, revisions): the
business rules are rules.py's, run inside a `BEGIN IMMEDIATE` transaction (one writer at a time)
over `_Rows`, this dialect's SQL for the rows they read and write.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from fleet.controller.store import rules
from fleet.controller.store.protocol import Fence
from fleet.controller.store.records import (
    AuditRecord,
    BundleRecord,
    DesiredEntry,
    DeviceRecord,
    Measurement,
    Revocation,
    RolloutRecord,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, labels TEXT NOT NULL, expires_at REAL NOT NULL,
    used_by TEXT, used_at REAL);
CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS desired (
    device_id TEXT NOT NULL, model TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (device_id, model));
CREATE TABLE IF NOT EXISTS bundles (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS bundles_by_version ON bundles (name, version);
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY, created_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY, rollout_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS measurements_by_rollout ON measurements (rollout_id);
CREATE TABLE IF NOT EXISTS telemetry (
    id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, received_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS telemetry_by_device ON telemetry (device_id, received_at);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (
    public_key_sha256 TEXT PRIMARY KEY, device_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, fencing_token INTEGER NOT NULL,
    expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SqliteStore:
    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The controller calls the store from one executor thread; the lock keeps any other
        # caller (tests, tools) from interleaving transactions.
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
        )
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(rollouts)")}
        if "revision" not in columns:  # a database from before rollout revisions
            self._db.execute("ALTER TABLE rollouts ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    # tokens
    def add_token(self, token_hash: str, labels: dict[str, str], expires_at: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO tokens (token_hash, labels, expires_at) VALUES (?, ?, ?)",
                (token_hash, json.dumps(labels), expires_at),
            )

    def consume_token(self, token_hash: str, device_id: str, now: float) -> dict[str, str]:
        with self._transaction() as db:
            return rules.consume_token(_Rows(db), token_hash, device_id, now)

    # devices
    def upsert_device(self, device: DeviceRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO devices (device_id, doc) VALUES (?, ?)",
                (device.device_id, device.model_dump_json()),
            )

    def get_device(self, device_id: str) -> DeviceRecord | None:
        rows = self._query("SELECT doc FROM devices WHERE device_id = ?", (device_id,))
        return DeviceRecord.model_validate_json(str(rows[0][0])) if rows else None

    def list_devices(self) -> list[DeviceRecord]:
        rows = self._query("SELECT doc FROM devices ORDER BY device_id")
        return [DeviceRecord.model_validate_json(str(row[0])) for row in rows]

    def delete_device(self, device_id: str) -> None:
        with self._transaction() as db:
            rules.remove_device(_Rows(db), device_id)

    def revoke_device(self, revocation: Revocation) -> None:
        with self._transaction() as db:
            rules.revoke_device(_Rows(db), revocation)

    def revocations(self) -> list[Revocation]:
        rows = self._query("SELECT doc FROM revocations ORDER BY public_key_sha256")
        return [Revocation.model_validate_json(str(row[0])) for row in rows]

    # desired state
    def desired_for(self, device_id: str) -> list[DesiredEntry]:
        rows = self._query(
            "SELECT doc FROM desired WHERE device_id = ? ORDER BY model", (device_id,)
        )
        return [DesiredEntry.model_validate_json(str(row[0])) for row in rows]

    def all_desired(self) -> list[DesiredEntry]:
        rows = self._query("SELECT doc FROM desired ORDER BY device_id, model")
        return [DesiredEntry.model_validate_json(str(row[0])) for row in rows]

    def set_desired(self, entries: Sequence[DesiredEntry]) -> None:
        with self._transaction() as db:
            _Rows(db).write_desired(entries)

    def delete_desired(self, device_id: str, model: str) -> None:
        with self._transaction() as db:
            _Rows(db).delete_desired([(device_id, model)])

    # bundles
    def add_bundle(self, bundle: BundleRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO bundles (sha256, name, version, doc) VALUES (?, ?, ?, ?)",
                (bundle.sha256, bundle.name, bundle.version, bundle.model_dump_json()),
            )

    def get_bundle(self, sha256: str) -> BundleRecord | None:
        rows = self._query("SELECT doc FROM bundles WHERE sha256 = ?", (sha256,))
        return BundleRecord.model_validate_json(str(rows[0][0])) if rows else None

    def find_bundle(self, name: str, version: str) -> BundleRecord | None:
        rows = self._query(
            "SELECT doc FROM bundles WHERE name = ? AND version = ? ORDER BY rowid DESC LIMIT 1",
            (name, version),
        )
        return BundleRecord.model_validate_json(str(rows[0][0])) if rows else None

    def find_bundle_named(self, name: str) -> BundleRecord | None:
        rows = self._query(
            "SELECT doc FROM bundles WHERE name = ? ORDER BY rowid DESC LIMIT 1", (name,)
        )
        return BundleRecord.model_validate_json(str(rows[0][0])) if rows else None

    # rollouts
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
    ) -> None:
        with self._transaction() as db:
            rules.save_rollout(
                _Rows(db),
                rollout,
                desired,
                undesired,
                expected_revision=expected_revision,
                fence=fence,
                measurements=measurements,
                audit=audit,
            )

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        rows = self._query("SELECT doc FROM rollouts WHERE rollout_id = ?", (rollout_id,))
        return RolloutRecord.model_validate_json(str(rows[0][0])) if rows else None

    def list_rollouts(self) -> list[RolloutRecord]:
        rows = self._query("SELECT doc FROM rollouts ORDER BY created_at")
        return [RolloutRecord.model_validate_json(str(row[0])) for row in rows]

    def add_measurements(self, rollout_id: str, measurements: Sequence[Measurement]) -> None:
        with self._transaction() as db:
            _Rows(db).add_measurements(rollout_id, measurements)

    def measurements(self, rollout_id: str) -> list[Measurement]:
        rows = self._query(
            "SELECT doc FROM measurements WHERE rollout_id = ? ORDER BY id", (rollout_id,)
        )
        return [Measurement.model_validate_json(str(row[0])) for row in rows]

    # telemetry
    def add_telemetry(self, rows: Sequence[tuple[str, float, str]]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO telemetry (device_id, received_at, doc) VALUES (?, ?, ?)", rows
            )

    def telemetry(self, device_id: str, since: float, limit: int) -> list[tuple[float, str]]:
        rows = self._query(
            "SELECT received_at, doc FROM telemetry WHERE device_id = ? AND received_at >= ?"
            " ORDER BY received_at DESC LIMIT ?",
            (device_id, since, limit),
        )
        return [(float(str(at)), str(doc)) for at, doc in reversed(rows)]

    def last_telemetry(self) -> dict[str, float]:
        rows = self._query("SELECT device_id, max(received_at) FROM telemetry GROUP BY device_id")
        return {str(device): float(str(at)) for device, at in rows}

    def recent_telemetry(self, since: float) -> list[tuple[str, float, str]]:
        rows = self._query(
            "SELECT device_id, received_at, doc FROM telemetry WHERE received_at >= ?"
            " ORDER BY received_at",
            (since,),
        )
        return [(str(device), float(str(at)), str(doc)) for device, at, doc in rows]

    def prune_telemetry(self, before: float) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM telemetry WHERE received_at < ?", (before,)).rowcount

    # audit
    def add_audit(self, record: AuditRecord) -> None:
        with self._transaction() as db:
            _Rows(db).add_audit([record])

    def audit_entries(self, limit: int) -> list[AuditRecord]:
        rows = self._query("SELECT doc FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [AuditRecord.model_validate_json(str(row[0])) for row in reversed(rows)]

    # leases: one machine, but the same contract as PostgreSQL (the rollout engine uses both)
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> int | None:
        with self._transaction() as db:
            return rules.acquire_lease(_Rows(db), name, holder, ttl_s)

    def release_lease(self, name: str, holder: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
                (time.time(), name, holder),
            )

    def lease_holders(self, prefix: str) -> list[str]:
        rows = self._query("SELECT holder, name FROM leases WHERE expires_at > ?", (time.time(),))
        return [str(holder) for holder, name in rows if str(name).startswith(prefix)]

    def claim(self, key: str, value: str) -> str:
        with self._transaction() as db:
            return rules.claim(_Rows(db), key, value)

    def publish(self, payload: str) -> None:
        """One controller per SQLite file: nobody else to tell."""


class _Rows:
    """The rows the rules read and write, in SQLite's dialect, inside the caller's transaction
    (BEGIN IMMEDIATE: the database is locked for writing, so no row needs a lock of its own)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    # tokens
    def token(self, token_hash: str) -> rules.TokenRow | None:
        row = self._db.execute(
            "SELECT labels, expires_at, used_by FROM tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return None if row is None else rules.TokenRow(str(row[0]), float(row[1]), row[2])

    def use_token(self, token_hash: str, device_id: str, now: float) -> None:
        self._db.execute(
            "UPDATE tokens SET used_by = ?, used_at = ? WHERE token_hash = ?",
            (device_id, now, token_hash),
        )

    # leases, in this machine's clock
    def lease(self, name: str, *, exclusive: bool) -> rules.LeaseRow | None:
        row = self._db.execute(
            "SELECT holder, fencing_token, expires_at > ? FROM leases WHERE name = ?",
            (time.time(), name),
        ).fetchone()
        return None if row is None else rules.LeaseRow(str(row[0]), int(row[1]), bool(row[2]))

    def put_lease(self, name: str, holder: str, token: int, ttl_s: float, exists: bool) -> bool:
        self._db.execute(
            "INSERT OR REPLACE INTO leases (name, holder, fencing_token, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (name, holder, token, time.time() + ttl_s),
        )
        return True

    # rollouts
    def put_rollout(self, rollout: RolloutRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO rollouts (rollout_id, created_at, doc, revision)"
            " VALUES (?, ?, ?, ?)",
            (rollout.rollout_id, rollout.created_at, rollout.model_dump_json(), rollout.revision),
        )

    def replace_rollout(self, rollout: RolloutRecord, revision: int) -> bool:
        updated = self._db.execute(
            "UPDATE rollouts SET doc = ?, revision = ? WHERE rollout_id = ? AND revision = ?",
            (rollout.model_dump_json(), rollout.revision, rollout.rollout_id, revision),
        )
        return updated.rowcount == 1

    def add_measurements(self, rollout_id: str, measurements: Sequence[Measurement]) -> None:
        self._db.executemany(
            "INSERT INTO measurements (rollout_id, doc) VALUES (?, ?)",
            [(rollout_id, measurement.model_dump_json()) for measurement in measurements],
        )

    def add_audit(self, records: Sequence[AuditRecord]) -> None:
        self._db.executemany(
            "INSERT INTO audit (at, doc) VALUES (?, ?)",
            [(record.at, record.model_dump_json()) for record in records],
        )

    # desired state
    def desired_from(self, source: str) -> set[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT device_id, model FROM desired WHERE json_extract(doc, '$.source') = ?",
            (source,),
        )
        return {(str(device), str(model)) for device, model in rows}

    def write_desired(self, entries: Sequence[DesiredEntry]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO desired (device_id, model, doc) VALUES (?, ?, ?)",
            [(entry.device_id, entry.model, entry.model_dump_json()) for entry in entries],
        )

    def delete_desired(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._db.executemany("DELETE FROM desired WHERE device_id = ? AND model = ?", pairs)

    # devices
    def delete_device(self, device_id: str) -> None:
        self._db.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))

    def delete_desired_of(self, device_id: str) -> None:
        self._db.execute("DELETE FROM desired WHERE device_id = ?", (device_id,))

    def put_revocation(self, revocation: Revocation) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO revocations (public_key_sha256, device_id, doc)"
            " VALUES (?, ?, ?)",
            (revocation.public_key_sha256, revocation.device_id, revocation.model_dump_json()),
        )

    # claims
    def add_claim_if_absent(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO claims (key, value) VALUES (?, ?)", (key, value))

    def claim(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM claims WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
