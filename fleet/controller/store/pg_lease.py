"""Leases with fencing tokens in PostgreSQL: the building block for controller replicas, where
exactly one replica may drive a rollout at a time.

A lease is a row of `leases` (schema version 2): its holder, a fencing token, and an expiry in
the database's clock (`now()`), so replicas' clocks never need to agree. Acquiring takes a free
or expired lease and increments its token; renewing keeps it. A write made under a lease
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

from fleet.controller.store.protocol import LeaseLost

__all__ = ["LeaseLost", "acquire", "check", "fenced", "holder_of", "release"]


_ACQUIRE = """
INSERT INTO leases AS lease (name, holder, fencing_token, expires_at)
VALUES (%(name)s, %(holder)s, 1, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE SET
    holder = EXCLUDED.holder,
    fencing_token = CASE WHEN lease.holder = EXCLUDED.holder AND lease.expires_at > now()
                         THEN lease.fencing_token ELSE lease.fencing_token + 1 END,
    expires_at = EXCLUDED.expires_at
WHERE lease.holder = EXCLUDED.holder OR lease.expires_at <= now()
RETURNING fencing_token
"""

_CHECK = """
SELECT 1 FROM leases
WHERE name = %s AND holder = %s AND fencing_token = %s AND expires_at > now()
FOR SHARE
"""


def acquire(
    connection: psycopg.Connection[Any], name: str, holder: str, ttl_s: float
) -> int | None:
    """Take or renew lease `name` for `ttl_s` seconds; its fencing token, or None if another
    holder has it. A holder that renews after its lease expired gets a new token: whatever it
    started under the old one must not be finished under the new one."""
    with connection.transaction():
        row = connection.execute(
            _ACQUIRE, {"name": name, "holder": holder, "ttl": ttl_s}
        ).fetchone()
    return int(row[0]) if row else None


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
    if connection.execute(_CHECK, (name, holder, token)).fetchone() is None:
        raise LeaseLost(f"lease {name!r} is no longer held by {holder!r} (token {token})")


@contextmanager
def fenced(
    connection: psycopg.Connection[Any], name: str, holder: str, token: int
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction whose writes commit only while `holder` holds lease `name` with `token`;
    raises LeaseLost (writing nothing) otherwise."""
    with connection.transaction():
        check(connection, name, holder, token)
        yield connection
