"""PostgreSQL implementation of `Store`, for controllers that must outlive one machine.

psycopg 3 rather than asyncpg (measured in bench/bench_pg_driver.py, docs/benchmarks.md): both
are well kept; psycopg is typed (mypy strict, no stub package), speaks libpq so PGPASSWORD,
PGPASSFILE, service files and sslmode work as operators expect, and offers the same API blocking
and async, so this store fits the blocking `Store` contract the controller runs in its store
thread today and moves to `AsyncConnection` without a rewrite. asyncpg was faster on tight
per-row loops, but the controller batches telemetry (one executemany per flush) and a heartbeat
costs one round trip either way.

The business rules (tokens, leases and fences, revisions, pins) are rules.py's, shared with
SQLite; this module supplies their rows in PostgreSQL's dialect (`_Rows`), with row locks where
SQLite locks the whole database. One pooled connection block is one transaction.

Connections come from a small pool that checks a connection before handing it out, so a store
call after PostgreSQL restarted gets a fresh connection instead of a dead one.

Records are stored as JSON text (not jsonb): they carry NaN for figures nobody measured, which
JSON text keeps and jsonb refuses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from fleet.controller.store import pg_lease, rules
from fleet.controller.store.pg_lease import PostgresLeases
from fleet.controller.store.pg_migrations import migrate
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

logger = logging.getLogger(__name__)
# The NOTIFY channel replicas tell each other about changes on
# (fleet.controller.replication.changefeed).
CHANNEL = "edgefleet"
POOL_SIZE = 4
GETCONN_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10


def redacted(dsn: str) -> str:
    """`dsn` with any password removed, for logs and error messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable PostgreSQL address>"
    params.pop("password", None)
    return make_conninfo(**{key: str(value) for key, value in params.items()})


class PostgresStore:
    def __init__(self, dsn: str, password: str | None = None, pool_size: int = POOL_SIZE) -> None:
        kwargs: dict[str, Any] = {"application_name": "edgefleet-controller"}
        if password is not None:
            kwargs["password"] = password
        # For the replica's own LISTEN connection (fleet.controller.replication.changefeed).
        self.dsn = dsn
        self.connect_kwargs = dict(kwargs)
        # One direct connection first: a wrong address or password fails now, with libpq's
        # reason, and the schema is migrated before any pooled connection is used.
        try:
            with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, **kwargs) as connection:
                applied = migrate(connection)
        except psycopg.OperationalError as error:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreachable"
            if password:
                reason = reason.replace(password, "***")
            raise ConnectionError(f"cannot use PostgreSQL at {redacted(dsn)}: {reason}") from None
        if applied:
            logger.info("PostgreSQL store migrated to schema version %d", applied[-1])
        self._pool = ConnectionPool(
            dsn,
            kwargs=kwargs,
            min_size=1,
            max_size=pool_size,
            check=ConnectionPool.check_connection,
            open=True,
            # A call while PostgreSQL is away fails after this long instead of hanging.
            timeout=GETCONN_TIMEOUT_S,
            name="edgefleet-store",
        )

    def close(self) -> None:
        self._pool.close()

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as connection:
            return connection.execute(sql, params).fetchall()

    # tokens
    def add_token(self, token_hash: str, labels: dict[str, str], expires_at: float) -> None:
        with self._pool.connection() as connection:
            connection.execute(
                "INSERT INTO tokens (token_hash, labels, expires_at) VALUES (%s, %s, %s)",
                (token_hash, json.dumps(labels), expires_at),
            )

    def consume_token(self, token_hash: str, device_id: str, now: float) -> dict[str, str]:
        with self._pool.connection() as connection:
            return rules.consume_token(_Rows(connection), token_hash, device_id, now)

    # devices
    def upsert_device(self, device: DeviceRecord) -> None:
        with self._pool.connection() as connection:
            connection.execute(
                "INSERT INTO devices (device_id, doc) VALUES (%s, %s)"
                " ON CONFLICT (device_id) DO UPDATE SET doc = EXCLUDED.doc",
                (device.device_id, device.model_dump_json()),
            )

    def get_device(self, device_id: str) -> DeviceRecord | None:
        rows = self._fetch("SELECT doc FROM devices WHERE device_id = %s", (device_id,))
        return DeviceRecord.model_validate_json(rows[0][0]) if rows else None

    def list_devices(self) -> list[DeviceRecord]:
        rows = self._fetch("SELECT doc FROM devices ORDER BY device_id")
        return [DeviceRecord.model_validate_json(row[0]) for row in rows]

    def delete_device(self, device_id: str) -> None:
        with self._pool.connection() as connection:
            rules.remove_device(_Rows(connection), device_id)

    def revoke_device(self, revocation: Revocation) -> None:
        with self._pool.connection() as connection:
            rules.revoke_device(_Rows(connection), revocation)

    def revocations(self) -> list[Revocation]:
        rows = self._fetch("SELECT doc FROM revocations ORDER BY public_key_sha256")
        return [Revocation.model_validate_json(row[0]) for row in rows]

    # desired state
    def desired_for(self, device_id: str) -> list[DesiredEntry]:
        rows = self._fetch(
            "SELECT doc FROM desired WHERE device_id = %s ORDER BY model", (device_id,)
        )
        return [DesiredEntry.model_validate_json(row[0]) for row in rows]

    def all_desired(self) -> list[DesiredEntry]:
        rows = self._fetch("SELECT doc FROM desired ORDER BY device_id, model")
        return [DesiredEntry.model_validate_json(row[0]) for row in rows]

    def set_desired(self, entries: Sequence[DesiredEntry]) -> None:
        with self._pool.connection() as connection:
            _Rows(connection).write_desired(entries)

    def delete_desired(self, device_id: str, model: str) -> None:
        with self._pool.connection() as connection:
            _Rows(connection).delete_desired([(device_id, model)])

    # bundles
    def add_bundle(self, bundle: BundleRecord) -> None:
        # A re-upload counts as the newest, as SQLite's INSERT OR REPLACE gives it a new rowid.
        with self._pool.connection() as connection:
            connection.execute(
                "INSERT INTO bundles (sha256, name, version, doc) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (sha256) DO UPDATE SET name = EXCLUDED.name,"
                " version = EXCLUDED.version, doc = EXCLUDED.doc,"
                " seq = nextval(pg_get_serial_sequence('bundles', 'seq'))",
                (bundle.sha256, bundle.name, bundle.version, bundle.model_dump_json()),
            )

    def get_bundle(self, sha256: str) -> BundleRecord | None:
        rows = self._fetch("SELECT doc FROM bundles WHERE sha256 = %s", (sha256,))
        return BundleRecord.model_validate_json(rows[0][0]) if rows else None

    def find_bundle(self, name: str, version: str) -> BundleRecord | None:
        rows = self._fetch(
            "SELECT doc FROM bundles WHERE name = %s AND version = %s ORDER BY seq DESC LIMIT 1",
            (name, version),
        )
        return BundleRecord.model_validate_json(rows[0][0]) if rows else None

    def find_bundle_named(self, name: str) -> BundleRecord | None:
        rows = self._fetch(
            "SELECT doc FROM bundles WHERE name = %s ORDER BY seq DESC LIMIT 1", (name,)
        )
        return BundleRecord.model_validate_json(rows[0][0]) if rows else None

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
        with self._pool.connection() as connection:
            rules.save_rollout(
                _Rows(connection),
                rollout,
                desired,
                undesired,
                expected_revision=expected_revision,
                fence=fence,
                measurements=measurements,
                audit=audit,
            )

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        rows = self._fetch("SELECT doc FROM rollouts WHERE rollout_id = %s", (rollout_id,))
        return RolloutRecord.model_validate_json(rows[0][0]) if rows else None

    def list_rollouts(self) -> list[RolloutRecord]:
        rows = self._fetch("SELECT doc FROM rollouts ORDER BY created_at")
        return [RolloutRecord.model_validate_json(row[0]) for row in rows]

    def add_measurements(self, rollout_id: str, measurements: Sequence[Measurement]) -> None:
        with self._pool.connection() as connection:
            _Rows(connection).add_measurements(rollout_id, measurements)

    def measurements(self, rollout_id: str) -> list[Measurement]:
        rows = self._fetch(
            "SELECT doc FROM measurements WHERE rollout_id = %s ORDER BY id", (rollout_id,)
        )
        return [Measurement.model_validate_json(row[0]) for row in rows]

    # telemetry
    def add_telemetry(self, rows: Sequence[tuple[str, float, str]]) -> None:
        if not rows:
            return
        # COPY: one round trip for a whole flush, however many rows.
        copy_sql = "COPY telemetry (device_id, received_at, doc) FROM STDIN"
        with (
            self._pool.connection() as connection,
            connection.cursor() as cursor,
            cursor.copy(copy_sql) as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def telemetry(self, device_id: str, since: float, limit: int) -> list[tuple[float, str]]:
        rows = self._fetch(
            "SELECT received_at, doc FROM telemetry WHERE device_id = %s AND received_at >= %s"
            " ORDER BY received_at DESC LIMIT %s",
            (device_id, since, limit),
        )
        return [(float(at), str(doc)) for at, doc in reversed(rows)]

    def last_telemetry(self) -> dict[str, float]:
        rows = self._fetch("SELECT device_id, max(received_at) FROM telemetry GROUP BY device_id")
        return {str(device): float(at) for device, at in rows}

    def recent_telemetry(self, since: float) -> list[tuple[str, float, str]]:
        rows = self._fetch(
            "SELECT device_id, received_at, doc FROM telemetry WHERE received_at >= %s"
            " ORDER BY received_at",
            (since,),
        )
        return [(str(device), float(at), str(doc)) for device, at, doc in rows]

    def prune_telemetry(self, before: float) -> int:
        with self._pool.connection() as connection:
            cursor = connection.execute("DELETE FROM telemetry WHERE received_at < %s", (before,))
            return cursor.rowcount

    # audit
    def add_audit(self, record: AuditRecord) -> None:
        with self._pool.connection() as connection:
            _Rows(connection).add_audit([record])

    def audit_entries(self, limit: int) -> list[AuditRecord]:
        rows = self._fetch("SELECT doc FROM audit ORDER BY id DESC LIMIT %s", (limit,))
        return [AuditRecord.model_validate_json(row[0]) for row in reversed(rows)]

    # replicas
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> int | None:
        with self._pool.connection() as connection:
            return pg_lease.acquire(connection, name, holder, ttl_s)

    def release_lease(self, name: str, holder: str) -> None:
        with self._pool.connection() as connection:
            pg_lease.release(connection, name, holder)

    def lease_holders(self, prefix: str) -> list[str]:
        rows = self._fetch(
            "SELECT holder FROM leases WHERE starts_with(name, %s) AND expires_at > now()",
            (prefix,),
        )
        return [str(row[0]) for row in rows]

    def claim(self, key: str, value: str) -> str:
        with self._pool.connection() as connection:
            return rules.claim(_Rows(connection), key, value)

    def publish(self, payload: str) -> None:
        with self._pool.connection() as connection:
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


class _Rows(PostgresLeases):
    """The rows the rules read and write, in PostgreSQL's dialect, inside the connection's
    current transaction; rows a rule decides on are locked until it commits."""

    # tokens: the row lock keeps two replicas enrolling with one token from both passing
    def token(self, token_hash: str) -> rules.TokenRow | None:
        row = self._connection.execute(
            "SELECT labels, expires_at, used_by FROM tokens WHERE token_hash = %s FOR UPDATE",
            (token_hash,),
        ).fetchone()
        return None if row is None else rules.TokenRow(str(row[0]), float(row[1]), row[2])

    def use_token(self, token_hash: str, device_id: str, now: float) -> None:
        self._connection.execute(
            "UPDATE tokens SET used_by = %s, used_at = %s WHERE token_hash = %s",
            (device_id, now, token_hash),
        )

    # rollouts
    def put_rollout(self, rollout: RolloutRecord) -> None:
        self._connection.execute(
            "INSERT INTO rollouts (rollout_id, created_at, doc, revision)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (rollout_id) DO UPDATE SET"
            " created_at = EXCLUDED.created_at, doc = EXCLUDED.doc,"
            " revision = EXCLUDED.revision",
            (rollout.rollout_id, rollout.created_at, rollout.model_dump_json(), rollout.revision),
        )

    def replace_rollout(self, rollout: RolloutRecord, revision: int) -> bool:
        updated = self._connection.execute(
            "UPDATE rollouts SET doc = %s, revision = %s WHERE rollout_id = %s AND revision = %s",
            (rollout.model_dump_json(), rollout.revision, rollout.rollout_id, revision),
        )
        return updated.rowcount == 1

    def add_measurements(self, rollout_id: str, measurements: Sequence[Measurement]) -> None:
        if not measurements:
            return
        with self._connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO measurements (rollout_id, doc) VALUES (%s, %s)",
                [(rollout_id, measurement.model_dump_json()) for measurement in measurements],
            )

    def add_audit(self, records: Sequence[AuditRecord]) -> None:
        for record in records:
            self._connection.execute(
                "INSERT INTO audit (at, doc) VALUES (%s, %s)",
                (record.at, record.model_dump_json()),
            )

    # desired state
    def desired_from(self, source: str) -> set[tuple[str, str]]:
        rows = self._connection.execute(
            "SELECT device_id, model FROM desired WHERE (doc::jsonb ->> 'source') = %s FOR UPDATE",
            (source,),
        ).fetchall()
        return {(str(device), str(model)) for device, model in rows}

    def write_desired(self, entries: Sequence[DesiredEntry]) -> None:
        if not entries:
            return
        with self._connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO desired (device_id, model, doc) VALUES (%s, %s, %s)"
                " ON CONFLICT (device_id, model) DO UPDATE SET doc = EXCLUDED.doc",
                [(entry.device_id, entry.model, entry.model_dump_json()) for entry in entries],
            )

    def delete_desired(self, pairs: Sequence[tuple[str, str]]) -> None:
        if not pairs:
            return
        with self._connection.cursor() as cursor:
            cursor.executemany("DELETE FROM desired WHERE device_id = %s AND model = %s", pairs)

    # devices
    def delete_device(self, device_id: str) -> None:
        self._connection.execute("DELETE FROM devices WHERE device_id = %s", (device_id,))

    def delete_desired_of(self, device_id: str) -> None:
        self._connection.execute("DELETE FROM desired WHERE device_id = %s", (device_id,))

    def put_revocation(self, revocation: Revocation) -> None:
        self._connection.execute(
            "INSERT INTO revocations (public_key_sha256, device_id, doc) VALUES (%s, %s, %s)"
            " ON CONFLICT (public_key_sha256) DO UPDATE SET doc = EXCLUDED.doc",
            (revocation.public_key_sha256, revocation.device_id, revocation.model_dump_json()),
        )

    # claims
    def add_claim_if_absent(self, key: str, value: str) -> None:
        self._connection.execute(
            "INSERT INTO claims (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            (key, value),
        )

    def claim(self, key: str) -> str | None:
        row = self._connection.execute("SELECT value FROM claims WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])
