"""SQLite (WAL) implementation of `Store`: one file in the controller's data directory."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from fleet.controller.store.protocol import Fence, LeaseLost, StaleRevision
from fleet.controller.store.records import (
    PIN_SOURCE,
    AuditRecord,
    BundleRecord,
    DesiredEntry,
    DeviceRecord,
    Measurement,
    Revocation,
    RolloutRecord,
)
from fleet.errors import PermissionDenied

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
            row = db.execute(
                "SELECT labels, expires_at, used_by FROM tokens WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None:
                raise PermissionDenied("unknown enrollment token")
            labels, expires_at, used_by = row
            if used_by is not None:
                raise PermissionDenied("enrollment token was already used")
            if expires_at < now:
                raise PermissionDenied("enrollment token expired")
            db.execute(
                "UPDATE tokens SET used_by = ?, used_at = ? WHERE token_hash = ?",
                (device_id, now, token_hash),
            )
            result: dict[str, str] = json.loads(labels)
            return result

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
            db.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
            db.execute("DELETE FROM desired WHERE device_id = ?", (device_id,))

    def revoke_device(self, revocation: Revocation) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO revocations (public_key_sha256, device_id, doc)"
                " VALUES (?, ?, ?)",
                (
                    revocation.public_key_sha256,
                    revocation.device_id,
                    revocation.model_dump_json(),
                ),
            )
            db.execute("DELETE FROM devices WHERE device_id = ?", (revocation.device_id,))
            db.execute("DELETE FROM desired WHERE device_id = ?", (revocation.device_id,))

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
            self._write_desired(db, entries)

    def delete_desired(self, device_id: str, model: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM desired WHERE device_id = ? AND model = ?", (device_id, model))

    @staticmethod
    def _write_desired(db: sqlite3.Connection, entries: Sequence[DesiredEntry]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO desired (device_id, model, doc) VALUES (?, ?, ?)",
            [(entry.device_id, entry.model, entry.model_dump_json()) for entry in entries],
        )

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
            if (
                fence is not None
                and not db.execute(
                    "SELECT 1 FROM leases WHERE name = ? AND holder = ? AND fencing_token = ?"
                    " AND expires_at > ?",
                    (fence.name, fence.holder, fence.token, time.time()),
                ).fetchone()
            ):
                raise LeaseLost(f"lease {fence.name!r} is no longer held by {fence.holder!r}")
            document = rollout.model_dump_json()
            if expected_revision is None:
                db.execute(
                    "INSERT OR REPLACE INTO rollouts (rollout_id, created_at, doc, revision)"
                    " VALUES (?, ?, ?, ?)",
                    (rollout.rollout_id, rollout.created_at, document, rollout.revision),
                )
            elif (
                db.execute(
                    "UPDATE rollouts SET doc = ?, revision = ?"
                    " WHERE rollout_id = ? AND revision = ?",
                    (document, rollout.revision, rollout.rollout_id, expected_revision),
                ).rowcount
                != 1
            ):
                raise StaleRevision(
                    f"rollout {rollout.rollout_id} changed since revision {expected_revision}"
                )
            db.executemany(
                "INSERT INTO measurements (rollout_id, doc) VALUES (?, ?)",
                [(rollout.rollout_id, m.model_dump_json()) for m in measurements],
            )
            db.executemany(
                "INSERT INTO audit (at, doc) VALUES (?, ?)",
                [(record.at, record.model_dump_json()) for record in audit],
            )
            # Pins always win: a rollout never overwrites or removes a pinned entry, even one
            # pinned a moment ago, after the rollout read the desired state.
            pinned = {
                (str(device), str(model))
                for device, model in db.execute(
                    "SELECT device_id, model FROM desired WHERE json_extract(doc, '$.source') = ?",
                    (PIN_SOURCE,),
                )
            }
            self._write_desired(db, [e for e in desired if (e.device_id, e.model) not in pinned])
            db.executemany(
                "DELETE FROM desired WHERE device_id = ? AND model = ?",
                [pair for pair in undesired if tuple(pair) not in pinned],
            )

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        rows = self._query("SELECT doc FROM rollouts WHERE rollout_id = ?", (rollout_id,))
        return RolloutRecord.model_validate_json(str(rows[0][0])) if rows else None

    def list_rollouts(self) -> list[RolloutRecord]:
        rows = self._query("SELECT doc FROM rollouts ORDER BY created_at")
        return [RolloutRecord.model_validate_json(str(row[0])) for row in rows]

    def add_measurements(self, rollout_id: str, measurements: Sequence[Measurement]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO measurements (rollout_id, doc) VALUES (?, ?)",
                [(rollout_id, measurement.model_dump_json()) for measurement in measurements],
            )

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

    def prune_telemetry(self, before: float) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM telemetry WHERE received_at < ?", (before,)).rowcount

    # audit
    def add_audit(self, record: AuditRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO audit (at, doc) VALUES (?, ?)", (record.at, record.model_dump_json())
            )

    def audit_entries(self, limit: int) -> list[AuditRecord]:
        rows = self._query("SELECT doc FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [AuditRecord.model_validate_json(str(row[0])) for row in reversed(rows)]

    # leases: one machine, but the same contract as PostgreSQL (the rollout engine uses both)
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> int | None:
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT holder, fencing_token, expires_at FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                token = 1
            else:
                held_by, current, expires_at = str(row[0]), int(row[1]), float(row[2])
                if held_by != holder and expires_at > now:
                    return None
                token = current if held_by == holder and expires_at > now else current + 1
            db.execute(
                "INSERT OR REPLACE INTO leases (name, holder, fencing_token, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (name, holder, token, now + ttl_s),
            )
            return token

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
            db.execute("INSERT OR IGNORE INTO claims (key, value) VALUES (?, ?)", (key, value))
            row = db.execute("SELECT value FROM claims WHERE key = ?", (key,)).fetchone()
            return str(row[0]) if row else value

    def publish(self, payload: str) -> None:
        """One controller per SQLite file: nobody else to tell."""
