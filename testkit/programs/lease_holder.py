"""A lease holder as its own process, for the fencing tests: renews lease NAME every 50 ms and
writes one fenced row per round; exits 3 as soon as it learns it lost the lease.

    python -m testkit.programs.lease_holder DSN NAME HOLDER TTL_S
"""

from __future__ import annotations

import sys
import time

import psycopg

from fleet.controller.store.pg_lease import acquire, fenced
from fleet.controller.store.protocol import LeaseLost


def main() -> int:
    dsn, name, holder, ttl = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    with psycopg.connect(dsn, autocommit=True) as connection:
        token = acquire(connection, name, holder, ttl)
        if token is None:
            return 2
        print(f"leader token {token}", flush=True)
        while True:
            try:
                with fenced(connection, name, holder, token) as transaction:
                    transaction.execute(
                        "INSERT INTO fenced_writes (holder, token) VALUES (%s, %s)",
                        (holder, token),
                    )
            except LeaseLost:
                print("lease lost: no more writes", flush=True)
                return 3
            time.sleep(0.05)
            renewed = acquire(connection, name, holder, ttl)
            if renewed != token:
                print(f"lease lost on renewal ({renewed})", flush=True)
                return 3


if __name__ == "__main__":
    sys.exit(main())
