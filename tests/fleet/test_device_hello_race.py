"""A device's hello against the replicas' refresh, on PostgreSQL: what the hello says must
survive an operator's listing taken while its store write is under way.

Replicas take the store's copy of every device not connected to them when the devices are
listed (`Devices.refresh`). A device is connected only once its hello is stored, so a listing
during that write took the store's older copy and, before the fix, put it over what the hello
had said for as long as the device stayed connected: its new labels and versions were lost
until its next hello (`test_serve_agent` timed out after 60 s this way on a loaded machine).
Here a PostgreSQL table lock holds a listing's read back until the hello is waiting behind
it, so the race always happens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import start_node, wait_for

pytestmark = pytest.mark.system


def _labels(listing: admin_pb2.ListDevicesResponse, device_id: str) -> dict[str, str] | None:
    for device in listing.devices:
        if device.device_id == device_id:
            return dict(device.labels)
    return None


@pytest.mark.parametrize("controller", ["postgresql"], indirect=True)
async def test_a_listing_during_the_hello_write_does_not_undo_the_hello(
    tmp_path: Path, controller: ControllerApp, admin: AdminClient, signing_keys: tuple[Path, Path]
):
    node = await start_node("dock", tmp_path, controller, admin, (signing_keys[1],))
    try:
        await wait_for(node.online, 30, "the device to connect")
        await node.stop_agent()
        # Its next hello adds a label; its store write waits for this lock.
        node.agent_settings = node.agent_settings.model_copy(update={"labels": {"rack": "7"}})
        settings = controller.settings
        assert settings.store_password is not None
        with psycopg.connect(
            str(settings.store), password=settings.store_password.get_secret_value()
        ) as lock:
            # A listing whose read of the devices waits for this lock, then the device's
            # hello, whose write queues behind that read: the listing's copy is the old one.
            lock.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
            listing = asyncio.ensure_future(admin.stub.ListDevices(admin_pb2.ListDevicesRequest()))
            await asyncio.sleep(0.5)
            await node.start_agent()
            await asyncio.sleep(1.0)  # the hello arrives and waits to be written
            assert not node.online(), "the hello was stored through the lock"
            lock.commit()
        await listing

        async def told() -> bool:
            listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
            return _labels(listed, "dock") == {"site": "lobby", "rack": "7"}

        await wait_for(told, 15, "the hello's labels in the listing")
    finally:
        await node.stop()
