"""Leases with fencing tokens on a real PostgreSQL: one holder at a time, takeover after expiry,
and a leader paused past its lease (SIGSTOP, then SIGCONT) that cannot write afterwards."""

from __future__ import annotations

import signal
import sys
import time

import psycopg
import pytest

from fleet.controller.store.pg_lease import acquire, fenced, holder_of, release
from fleet.controller.store.pg_migrations import migrate
from fleet.controller.store.protocol import LeaseLost
from testkit.processes import spawn

# A real PostgreSQL and a lease holder process: system tests.
pytestmark = pytest.mark.system

TTL_S = 1.0


@pytest.fixture
def database(postgres_dsn: str) -> str:
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        migrate(connection)
        connection.execute(
            "CREATE TABLE fenced_writes (id BIGSERIAL PRIMARY KEY, holder TEXT, token BIGINT,"
            " at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
        )
    return postgres_dsn


def test_one_holder_at_a_time_and_takeover_after_expiry(database):
    with (
        psycopg.connect(database, autocommit=True) as a,
        psycopg.connect(database, autocommit=True) as b,
    ):
        assert acquire(a, "rollouts", "replica-a", TTL_S) == 1
        assert acquire(b, "rollouts", "replica-b", TTL_S) is None
        assert acquire(a, "rollouts", "replica-a", TTL_S) == 1  # renewal keeps the token
        with fenced(a, "rollouts", "replica-a", 1) as transaction:
            transaction.execute("INSERT INTO fenced_writes (holder, token) VALUES ('a', 1)")
        time.sleep(TTL_S + 0.3)
        assert acquire(b, "rollouts", "replica-b", TTL_S) == 2
        assert holder_of(b, "rollouts") == ("replica-b", 2)
        with pytest.raises(LeaseLost), fenced(a, "rollouts", "replica-a", 1) as transaction:
            transaction.execute("INSERT INTO fenced_writes (holder, token) VALUES ('a', 1)")
        assert acquire(a, "rollouts", "replica-a", TTL_S) is None
        release(b, "rollouts", "replica-b")
        assert acquire(a, "rollouts", "replica-a", TTL_S) == 3
        rows = a.execute("SELECT holder, token FROM fenced_writes ORDER BY id").fetchall()
    assert rows == [("a", 1)]


def test_a_leader_paused_past_its_lease_cannot_write_after_it_resumes(database, tmp_path):
    leader = spawn(
        [sys.executable, "-m", "testkit.programs.lease_holder", database, "rollouts",
         "replica-a", str(TTL_S)],
        tmp_path / "leader.log",
    )  # fmt: skip
    try:
        with psycopg.connect(database, autocommit=True) as b:
            deadline = time.monotonic() + 30
            while not b.execute("SELECT count(*) FROM fenced_writes").fetchone()[0]:  # type: ignore[index]
                assert leader.running and time.monotonic() < deadline, leader.log()
                time.sleep(0.05)
            leader.signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            token = None
            while token is None:  # B takes over once A's lease expires
                token = acquire(b, "rollouts", "replica-b", 30)
                time.sleep(0.1)
            assert time.monotonic() - stopped_at >= TTL_S * 0.5
            assert token == 2
            row = b.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            taken_at = row[0]
            with fenced(b, "rollouts", "replica-b", token) as transaction:
                transaction.execute("INSERT INTO fenced_writes (holder, token) VALUES ('b', 2)")
            leader.signal(signal.SIGCONT)
            assert leader.wait(30) == 3, "the old leader must stop on waking"
            late = b.execute(
                "SELECT count(*) FROM fenced_writes WHERE holder = 'replica-a' AND at >= %s",
                (taken_at,),
            ).fetchone()
            assert late == (0,), "the old leader wrote after losing its lease"
            assert holder_of(b, "rollouts") == ("replica-b", 2)
    finally:
        leader.signal(signal.SIGCONT)
        leader.kill()
    assert "lease lost" in leader.log()
