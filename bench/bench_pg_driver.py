"""PostgreSQL driver for the controller's store: psycopg 3 against asyncpg, on the store's own
work, against a real PostgreSQL started for the run (Debian's, as the tests start it).

Workloads, each on one connection, one statement per transaction as the store does:
- upsert: a device record upserted by primary key (a heartbeat's device update);
- read: a device record read by primary key;
- telemetry: a flush of 1,000 telemetry rows (psycopg COPY, asyncpg copy_records_to_table).
Measured: operations per second (wall) and client CPU per operation (the controller's cost).
asyncpg is only needed for this comparison: `pip install asyncpg` first, else it is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from bench.machine import describe, write_section
from fleet.controller.store.pg_migrations import migrate
from testkit.services import start_postgres

DOC = json.dumps({"device_id": "cam", "labels": {"site": "lobby"}, "enrolled_at": 1.0,
                  "hardware_json": "{}" * 20, "active_versions": {"m": "2"}, "last_seen": 2.0})  # fmt: skip
ROWS = [(f"cam-{i % 50}", float(i), '{"models": [{"fps": 15.0, "p95": 11.2}]}') for i in range(1000)]  # fmt: skip


async def timed(operation: Callable[[int], Awaitable[Any]], count: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        await operation(index)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"ops_per_s": count / wall, "cpu_us_per_op": cpu / count * 1e6}


async def psycopg_run(dsn: str, count: int, flushes: int) -> dict[str, dict[str, float]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:

        async def upsert(index: int) -> None:
            await connection.execute(
                "INSERT INTO devices VALUES (%s, %s) ON CONFLICT (device_id)"
                " DO UPDATE SET doc = EXCLUDED.doc",
                (f"cam-{index % 500}", DOC),
            )

        async def read(index: int) -> None:
            cursor = await connection.execute(
                "SELECT doc FROM devices WHERE device_id = %s", (f"cam-{index % 500}",)
            )
            await cursor.fetchone()

        async def flush(_: int) -> None:
            async with (
                connection.cursor() as cursor,
                cursor.copy("COPY telemetry (device_id, received_at, doc) FROM STDIN") as copy,
            ):
                for row in ROWS:
                    await copy.write_row(row)

        return {
            "upsert": await timed(upsert, count),
            "read": await timed(read, count),
            "telemetry 1,000 rows": await timed(flush, flushes),
        }


async def asyncpg_run(dsn: str, count: int, flushes: int) -> dict[str, dict[str, float]]:
    import asyncpg  # type: ignore[import-not-found,import-untyped,unused-ignore]

    connection = await asyncpg.connect(dsn)
    try:

        async def upsert(index: int) -> None:
            await connection.execute(
                "INSERT INTO devices VALUES ($1, $2) ON CONFLICT (device_id)"
                " DO UPDATE SET doc = EXCLUDED.doc",
                f"cam-{index % 500}",
                DOC,
            )

        async def read(index: int) -> None:
            await connection.fetchrow(
                "SELECT doc FROM devices WHERE device_id = $1", f"cam-{index % 500}"
            )

        async def flush(_: int) -> None:
            await connection.copy_records_to_table(
                "telemetry", records=ROWS, columns=["device_id", "received_at", "doc"]
            )

        return {
            "upsert": await timed(upsert, count),
            "read": await timed(read, count),
            "telemetry 1,000 rows": await timed(flush, flushes),
        }
    finally:
        await connection.close()


def render(machine: str, results: dict[str, dict[str, dict[str, float]]], args: Any) -> str:
    lines = [
        "## PostgreSQL driver for the controller store (`bench/bench_pg_driver.py`)",
        "",
        f"Machine: {machine}. The machine is shared with other engineers' builds and tests:"
        " compare rows of one run, not absolute figures.",
        f"PostgreSQL 15 (Debian) on loopback, one connection, {args.count} single-row operations"
        f" and {args.flushes} telemetry flushes per workload, best of {args.rounds} rounds.",
        "",
        "| driver | workload | operations/s | client CPU µs per operation |",
        "|---|---|---:|---:|",
    ]
    for driver, workloads in results.items():
        for workload, figures in workloads.items():
            lines.append(
                f"| {driver} | {workload} | {figures['ops_per_s']:.0f} |"
                f" {figures['cpu_us_per_op']:.0f} |"
            )
    lines += [
        "",
        "Choice: psycopg 3, although asyncpg spends less client CPU per statement here. The"
        " controller does not write per heartbeat: telemetry is buffered and flushed about once a"
        " second as one COPY, so at 10,000 agents (1,000 heartbeats/s) the store costs a few ms of"
        " CPU per second with either driver. What decides is the rest: psycopg is typed (mypy"
        " strict without stub packages), speaks libpq (PGPASSWORD, PGPASSFILE, sslmode, service"
        " files work as operators expect), and has one API blocking and async, so the store fits"
        " today's blocking `Store` contract (run in the controller's store thread) and moves to"
        " `AsyncConnection` without a rewrite.",
        "",
        "Reproduce: `.venv/bin/pip install asyncpg && .venv/bin/python -m bench.bench_pg_driver"
        f" --count {args.count} --flushes {args.flushes} --rounds {args.rounds}`.",
    ]
    return "\n".join(lines)


def best(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        workload: max((r[workload] for r in rounds), key=lambda figures: figures["ops_per_s"])
        for workload in rounds[0]
    }


async def run(args: argparse.Namespace) -> None:
    machine = describe()
    server = start_postgres()
    try:
        database = server.create_database()
        dsn = server.dsn(database)
        with psycopg.connect(dsn) as connection:
            migrate(connection)
        drivers: dict[str, Callable[..., Awaitable[dict[str, dict[str, float]]]]] = {
            "psycopg 3.3 (async)": psycopg_run
        }
        try:
            import asyncpg  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401

            drivers["asyncpg"] = asyncpg_run
        except ImportError:
            print("asyncpg is not installed: measuring psycopg only")
        results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in drivers}
        for _ in range(args.rounds):  # alternate, so background load hits both alike
            for name, driver in drivers.items():
                results[name].append(await driver(dsn, args.count, args.flushes))
        summary = {name: best(rounds) for name, rounds in results.items()}
        print(json.dumps(summary, indent=2))
        if args.write:
            write_section("pg-driver", render(machine, summary, args))
    finally:
        server.remove("fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--flushes", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", dest="write", action="store_false")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
