"""Leases with fencing tokens in PostgreSQL: the building block for controller replicas, where
exactly one replica may drive a rollout at a time.

A lease is a row of `leases` (schema version 2): its holder, a fencing token, and an expiry in
the database's clock (`now()`), so replicas' clocks never need to agree. The rules (who may take
it, which token, what a fence checks) are fleet/controller/store/rules.py's, shared with SQLite;
this module is their PostgreSQL rows: the lease row read locked (`FOR UPDATE` to change it,
`FOR SHARE` to write under it) and written in the same transaction. A write made under a lease
(`fenced`) first locks the lease row and checks that the holder still holds that token and that
it has not expired, in the same transaction as the write: a takeover either commits before (the
old holder's write is refused) or waits for the write to commit (it was made while the lease was
held). So a leader that was paused (SIGSTOP, a long GC, a partition) and wakes after its lease
expired cannot write, even before it notices.

The rollout engine holds one lease per unfinished rollout (`rollout:<id>`, see
`fleet.controller.rollouts`): the replica holding it drives the rollout, and every write the
driver makes goes through `PostgresStore.save_rollout(fence=...)`, which runs `check` in the
write's transaction. tests/fleet/test_lease.py drives these functions from real processes;
tests/fleet/test_replicas.py kills a leading controller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from fleet.controller.store import rules
from fleet.controller.store.protocol import Fence

__all__ = ["PostgresLeases", "acquire", "check", "fenced", "holder_of", "release"]

_LEASE = "SELECT holder, fencing_token, expires_at > now() FROM leases WHERE name = %s"


class PostgresLeases:
    """`rules.LeaseRows` in PostgreSQL, inside the connection's current transaction."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def lease(self, name: str, *, exclusive: bool) -> rules.LeaseRow | None:
        lock = "FOR UPDATE" if exclusive else "FOR SHARE"
        row = self._connection.execute(f"{_LEASE} {lock}", (name,)).fetchone()
        return None if row is None else rules.LeaseRow(str(row[0]), int(row[1]), bool(row[2]))

    def put_lease(self, name: str, holder: str, token: int, ttl_s: float, exists: bool) -> bool:
        if exists:  # read FOR UPDATE in this transaction: ours to change
            self._connection.execute(
                "UPDATE leases SET holder = %s, fencing_token = %s,"
                " expires_at = now() + make_interval(secs => %s) WHERE name = %s",
                (holder, token, ttl_s, name),
            )
            return True
        inserted = self._connection.execute(
            "INSERT INTO leases (name, holder, fencing_token, expires_at)"
            " VALUES (%s, %s, %s, now() + make_interval(secs => %s))"
            " ON CONFLICT (name) DO NOTHING RETURNING 1",
            (name, holder, token, ttl_s),
        ).fetchone()
        return inserted is not None


def acquire(
    connection: psycopg.Connection[Any], name: str, holder: str, ttl_s: float
) -> int | None:
    """Take or renew lease `name` for `ttl_s` seconds; its fencing token, or None if another
    holder has it (`rules.next_token`)."""
    with connection.transaction():
        return rules.acquire_lease(PostgresLeases(connection), name, holder, ttl_s)


def release(connection: psycopg.Connection[Any], name: str, holder: str) -> None:
    """Give the lease up now (a clean shutdown), so another holder need not wait for expiry."""
    with connection.transaction():
        connection.execute(
            "UPDATE leases SET expires_at = now() WHERE name = %s AND holder = %s", (name, holder)
        )


def holder_of(connection: psycopg.Connection[Any], name: str) -> tuple[str, int] | None:
    """(holder, fencing token) of an unexpired lease `name`, or None."""
    row = connection.execute(
        "SELECT holder, fencing_token FROM leases WHERE name = %s AND expires_at > now()", (name,)
    ).fetchone()
    return (str(row[0]), int(row[1])) if row else None


def check(connection: psycopg.Connection[Any], name: str, holder: str, token: int) -> None:
    """In the caller's transaction: lock the lease row (shared) and raise LeaseLost unless
    `holder` still holds lease `name` with `token`. A takeover waits for that transaction."""
    rules.require_lease(PostgresLeases(connection), Fence(name, holder, token))


@contextmanager
def fenced(
    connection: psycopg.Connection[Any], name: str, holder: str, token: int
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction whose writes commit only while `holder` holds lease `name` with `token`;
    raises LeaseLost (writing nothing) otherwise."""
    with connection.transaction():
        check(connection, name, holder, token)
        yield connection
