"""Versioned schema migrations of the PostgreSQL store, applied in order when a controller starts.

Each migration runs once and is recorded in `schema_migrations`. Pending migrations apply in one
transaction under a transaction-level advisory lock: controllers starting together on one
database never race, and a failed migration leaves the schema where it was. Migrations are
append-only: a released one is never edited; a change is a new entry. A database newer than this
code is refused rather than written to.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import psycopg

# pg_advisory_xact_lock key: "edgefleet" in ASCII, fits a bigint.
MIGRATION_LOCK = 0x65646765666C6565


class Migration(NamedTuple):
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema: the tables of the SQLite store",
        """
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY, labels TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    used_by TEXT, used_at DOUBLE PRECISION);
CREATE TABLE devices (device_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE desired (
    device_id TEXT NOT NULL, model TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (device_id, model));
CREATE TABLE bundles (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, doc TEXT NOT NULL,
    seq BIGSERIAL NOT NULL);
CREATE INDEX bundles_by_version ON bundles (name, version);
CREATE TABLE rollouts (
    rollout_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, doc TEXT NOT NULL);
CREATE TABLE measurements (
    id BIGSERIAL PRIMARY KEY, rollout_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX measurements_by_rollout ON measurements (rollout_id);
CREATE TABLE telemetry (
    id BIGSERIAL PRIMARY KEY, device_id TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,
    doc TEXT NOT NULL);
CREATE INDEX telemetry_by_device ON telemetry (device_id, received_at);
CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, doc TEXT NOT NULL);
""",
    ),
    Migration(
        2,
        "telemetry pruning by time; leases with fencing tokens for controller replicas",
        """
CREATE INDEX telemetry_by_time ON telemetry (received_at);
CREATE TABLE leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, fencing_token BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL);
""",
    ),
    Migration(
        3,
        "revoked device keys",
        """
CREATE TABLE revocations (
    public_key_sha256 TEXT PRIMARY KEY, device_id TEXT NOT NULL, doc TEXT NOT NULL);
""",
    ),
    Migration(
        4,
        "controller replicas: rollout revisions (compare-and-set), fleet-wide claimed values",
        """
ALTER TABLE rollouts ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
CREATE TABLE claims (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""",
    ),
)
LATEST = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer controller than this one."""


def current_version(connection: psycopg.Connection[Any]) -> int:
    exists = connection.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = connection.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(connection: psycopg.Connection[Any], target: int = LATEST) -> list[int]:
    """Bring the schema to `target`; return the versions applied (none if it was there)."""
    applied: list[int] = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        version = current_version(connection)
        if version > LATEST:
            raise SchemaTooNew(
                f"the PostgreSQL schema is at version {version}; this controller knows up to "
                f"{LATEST}: upgrade the controller"
            )
        for migration in MIGRATIONS:
            if version < migration.version <= target:
                with connection.transaction():
                    connection.execute(migration.sql.encode())
                    connection.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                        (migration.version, migration.description, time.time()),
                    )
                applied.append(migration.version)
    return applied
