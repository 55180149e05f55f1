"""Every replica shows the same fleet (issue 24, item 4).

Two controllers on one PostgreSQL; three devices connected to replica a only, streaming
inference traffic. Replica b is restarted while they stream: within 5 s of its start it shows
every device online with the same telemetry (`fleetctl top`'s ListDevices), the same metrics
and the same dashboard content as a, which the devices are connected to.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import controller_settings, scrape_controller, start_node, wait_for

# Starts controllers, edge servers or services (PostgreSQL, Chromium): a system test.
pytestmark = pytest.mark.system

# Fleet-wide figures: equal on every replica (fleet/controller/metrics.py).
SHARED_METRICS = (
    "edgefleet_device_",
    "edgefleet_model_",
    "edgefleet_controller_devices",
    "edgefleet_controller_rollouts",
)
DEVICES = 3


def _scrape(app: ControllerApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = scrape_controller(app.admin_credential_path, port=app.metrics_port)
    assert status == 200, (status, text)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(SHARED_METRICS) and not sample.name.endswith("_created")
    }


def _devices(listed: admin_pb2.ListDevicesResponse) -> list[admin_pb2.Device]:
    """What `fleetctl top` shows, less `last_seen` (heartbeats touch the connected replica
    only; the test checks it apart)."""
    devices = []
    for device in listed.devices:
        copy = admin_pb2.Device()
        copy.CopyFrom(device)
        copy.ClearField("last_seen")
        copy.ClearField("temperature_c")  # NaN: never equal to itself
        devices.append(copy)
    return devices


def _content(fragment: str) -> str:
    """The dashboard's content less its clock and the charts' drawing (x is each replica's own
    time axis); the chart captions (each series' latest value) stay."""
    fragment = re.sub(r'<p class="stamp">.*?</p>', "", fragment)
    return re.sub(r"<svg .*?</svg>", "", fragment)


async def test_a_restarted_replica_shows_the_fleet_as_the_replica_devices_use(
    tmp_path, signing_keys, postgres_server
):
    database = postgres_server.create_database()
    shared = {
        "store": postgres_server.dsn(database, with_password=False),
        "store_password": postgres_server.password,
        "ca_dir": tmp_path / "ca",
        "metrics_port": 0,
        "dashboard_port": 0,
        # One sample a second: both replicas hold the same latest sample most of the time.
        "telemetry_interval_s": 1.0,
    }

    def settings(name: str):
        return controller_settings(
            tmp_path / name, signing_keys[1].parent, replica_name=name, **shared
        )

    a = ControllerApp(settings("a"))
    await a.start()
    b = ControllerApp(settings("b"))
    await b.start()
    nodes = []
    try:
        credential = AdminCredential.load(a.admin_credential_path)
        async with AdminClient.connect(credential, f"127.0.0.1:{a.port}") as admin_a:
            for index in range(DEVICES):
                node = await start_node(
                    f"cam-{index}", tmp_path / f"n{index}", a, admin_a, (signing_keys[1],),
                    controller_addresses=f"127.0.0.1:{a.port}",
                )  # fmt: skip
                node.start_traffic(0.02)
                nodes.append(node)
            await wait_for(lambda: all(n.online() for n in nodes), 30, "agents connected to a")

            # Replica b goes away and comes back while the devices stream through a.
            await b.stop(0.2)
            await asyncio.sleep(1.0)
            b = ControllerApp(settings("b"))
            await b.start()
            started = time.monotonic()
            async with AdminClient.connect(credential, f"127.0.0.1:{b.port}") as admin_b:

                async def all_online_on_b() -> bool:
                    listed = await admin_b.stub.ListDevices(admin_pb2.ListDevicesRequest())
                    return len(listed.devices) == DEVICES and all(
                        d.online and d.memory_used_bytes > 0 and d.models[0].fps > 0
                        for d in listed.devices
                    )

                await wait_for(all_online_on_b, 5, "b to show every device online, measured")
                online_s = time.monotonic() - started

                tls = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
                tokens = {
                    app: json.loads(app.admin_credential_path.read_text())["dashboard_token"]
                    for app in (a, b)
                }
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as web:

                    async def dashboard(app: ControllerApp) -> str:
                        response = await web.get(
                            f"https://localhost:{app.dashboard_port}/fragment",
                            headers={"Authorization": f"Bearer {tokens[app]}"},
                        )
                        assert response.status == 200
                        return await response.text()

                    seen: dict[str, object] = {}

                    async def agree() -> bool:
                        listed_a, listed_b = await asyncio.gather(
                            admin_a.stub.ListDevices(admin_pb2.ListDevicesRequest()),
                            admin_b.stub.ListDevices(admin_pb2.ListDevicesRequest()),
                        )
                        metrics_a, metrics_b = await asyncio.gather(
                            asyncio.to_thread(_scrape, a),
                            asyncio.to_thread(_scrape, b),
                        )
                        page_a, page_b = await asyncio.gather(dashboard(a), dashboard(b))
                        seen.update(
                            devices=(_devices(listed_a), _devices(listed_b)),
                            metrics={
                                key: (metrics_a.get(key), metrics_b.get(key))
                                for key in metrics_a.keys() | metrics_b.keys()
                                if metrics_a.get(key) != metrics_b.get(key)
                            },
                        )
                        for x, y in zip(listed_a.devices, listed_b.devices, strict=True):
                            # Last seen: a's heartbeats are a's alone; b's is a telemetry old.
                            gap = x.last_seen.ToSeconds() - y.last_seen.ToSeconds()
                            assert -1 <= gap <= 3, (x.device_id, gap)
                        return (
                            _devices(listed_a) == _devices(listed_b)
                            and metrics_a == metrics_b
                            and _content(page_a) == _content(page_b)
                        )

                    await wait_for(
                        agree, max(5 - (time.monotonic() - started), 0.5),
                        "both replicas to show the same fleet", describe=lambda: str(seen),
                    )  # fmt: skip
                    agreed_s = time.monotonic() - started
                    page = await dashboard(b)
                    metrics_b = await asyncio.to_thread(_scrape, b)
        print(f"restarted replica: every device online after {online_s:.2f}s, "
              f"same telemetry, metrics and dashboard after {agreed_s:.2f}s")  # fmt: skip
        assert agreed_s < 5
        assert metrics_b[("edgefleet_controller_devices", (("state", "online"),))] == DEVICES
        for index in range(DEVICES):
            assert metrics_b[("edgefleet_device_online", (("device", f"cam-{index}"),))] == 1
            assert f'<tr data-device="cam-{index}" class="online">' in page
        assert page.count("<polyline") >= DEVICES  # b draws the charts of a's devices
    finally:
        for node in nodes:
            await node.stop()
        await b.stop(0.2)
        await a.stop(0.2)


def test_presence_survives_a_lost_note():
    """A replica that missed the 'online' note still shows a device online while the store
    shows its telemetry arriving; an 'offline' note wins over older telemetry."""
    from common.telemetry import TelemetryRecord
    from fleet.controller.devices import DeviceRegistry
    from fleet.controller.live import LiveFleet, TelemetrySample
    from fleet.controller.replication.replica import Replica

    live = LiveFleet(10, offline_after_s=3.0, remote_delay_s=1.0)
    replica = Replica(None, "b", enabled=True)  # type: ignore[arg-type]
    devices = DeviceRegistry(None, None, live, None, 0, replica)  # type: ignore[arg-type]
    assert not devices.online("cam-0")
    time.sleep(0.01)  # telemetry received after this replica started
    sample = TelemetrySample(0.0, TelemetryRecord(received_at=time.time()))
    live.record_remote("cam-0", sample)
    assert devices.online("cam-0")  # no note, but the store shows it streaming
    replica.disconnected_elsewhere("a", ["cam-0"])
    assert not devices.online("cam-0")  # it left a after its last sample
    time.sleep(0.01)
    live.record_remote("cam-0", TelemetrySample(0.0, TelemetryRecord(received_at=time.time())))
    assert devices.online("cam-0")  # back, somewhere
    stale = LiveFleet(10, offline_after_s=3.0, remote_delay_s=1.0)
    stale.record_remote(
        "cam-1", TelemetrySample(0.0, TelemetryRecord(received_at=time.time() - 10))
    )
    assert not DeviceRegistry(None, None, stale, None, 0, replica).online("cam-1")  # type: ignore[arg-type]
