"""PostgreSQL goes away for 10 s under a running fleet: the controller keeps its agents
connected, the edge servers keep serving, the telemetry that arrives meanwhile is buffered, and
when PostgreSQL returns the controller writes it and answers the admin API, without a restart."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import controller_settings, start_nodes, wait_for

# A real PostgreSQL stopped and restarted: a system test.
pytestmark = pytest.mark.system

OUTAGE_S = 10.0


def _telemetry_rows(dsn: str, since: float = 0.0, until: float = float("inf")) -> int:
    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            "SELECT count(*) FROM telemetry WHERE received_at >= %s AND received_at < %s",
            (since, until),
        ).fetchone()
        return int(row[0]) if row else 0


async def test_postgresql_down_for_ten_seconds(tmp_path, signing_keys, postgres_server):
    database = postgres_server.create_database()
    dsn = postgres_server.dsn(database)
    settings = controller_settings(
        tmp_path / "controller", signing_keys[1].parent,
        store=postgres_server.dsn(database, with_password=False),
        store_password=postgres_server.password,
    )  # fmt: skip
    app = ControllerApp(settings)
    await app.start()
    nodes = []
    try:
        credential = AdminCredential.load(app.admin_credential_path)
        async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as admin:
            nodes = await start_nodes(
                tmp_path, 2, app, admin, (signing_keys[1],), online_within_s=30
            )
            await wait_for(lambda: _telemetry_rows(dsn) > 0, 30, "telemetry in PostgreSQL")

            await asyncio.to_thread(postgres_server.stop, "immediate")
            down_at = time.time()
            served = [node.served for node in nodes]
            try:
                deadline = time.monotonic() + OUTAGE_S
                while time.monotonic() < deadline:
                    assert all(node.online() for node in nodes), "an agent lost its controller"
                    await asyncio.sleep(0.25)
            finally:
                up_at = time.time()
                await asyncio.to_thread(postgres_server.start)
            assert all(node.served > before for node, before in zip(nodes, served, strict=True))
            assert all(node.failed == 0 for node in nodes)

            # What arrived while PostgreSQL was away was buffered, and is written once it is back.
            await wait_for(
                lambda: _telemetry_rows(dsn, down_at + 1, up_at - 1) > 0,
                30,
                "telemetry received during the outage, written after it",
            )
            listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
            assert sorted(device.device_id for device in listed.devices) == ["cam-0", "cam-1"]
            assert all(node.online() for node in nodes)
    finally:
        for node in nodes:
            await node.stop()
        await app.stop(0.2)
