"""Issue 11, item 12: an oversized upload is refused with a precise status every time and leaves
nothing behind; a hung device (SIGSTOP) goes offline within a few telemetry intervals and comes
back on SIGCONT; "last seen" survives a controller restart. A real controller, a real
`edgefleet serve --controller` process, fleetctl as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import MODEL, controller_settings, scrape_controller, wait_for
from testkit.fleet_models import build_model_dir
from testkit.fleet_processes import ServeProcess, fleetctl

# edgefleet serve --controller as child processes: system tests.
pytestmark = pytest.mark.system

LIMIT = 3 * 1024 * 1024


async def test_oversized_uploads_get_a_precise_status_and_leave_nothing(tmp_path, signing_keys):
    app = ControllerApp(
        controller_settings(tmp_path / "controller", signing_keys[1].parent, max_bundle_bytes=LIMIT)
    )
    await app.start()
    credential = AdminCredential.load(app.admin_credential_path)
    big = tmp_path / "big.efb"
    big.write_bytes(os.urandom(4 * LIMIT))
    uploads = app.settings.data_dir / "uploads"
    try:
        # A fresh connection each time (the first upload of a fleetctl run), then one reused.
        for attempt in range(4):
            async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as admin:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await admin.upload_bundle(big)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (attempt, refused)
            assert f"larger than the {LIMIT}-byte limit" in str(refused.value.details())
            assert not list(uploads.iterdir())
        async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as admin:
            for attempt in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await admin.upload_bundle(big)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (attempt, refused)
        code, _, err = await fleetctl("deploy", str(big), credential=app.admin_credential_path)
        assert code == 1 and "INVALID_ARGUMENT: bundle is larger than" in err, err
        assert not list(uploads.iterdir())
    finally:
        await app.stop(0.1)


def _online_metric(app: ControllerApp, device_id: str) -> float | None:
    status, text = scrape_controller(app.admin_credential_path)
    assert status == 200, (status, text)
    for line in text.splitlines():
        if line.startswith(f'edgefleet_device_online{{device="{device_id}"}}'):
            return float(line.split()[-1])
    return None


async def test_a_hung_device_goes_offline_and_last_seen_survives_a_restart(tmp_path, signing_keys):
    # Telemetry every 0.2 s; offline after 5 intervals (1 s) of silence.
    settings = controller_settings(
        tmp_path / "controller", signing_keys[1].parent,
        metrics_port=0, offline_after_intervals=5,
    )  # fmt: skip
    app = ControllerApp(settings)
    await app.start()
    credential = AdminCredential.load(app.admin_credential_path)
    admin = AdminClient.connect(credential, f"127.0.0.1:{app.port}")
    token = await admin.stub.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest())
    build_model_dir(tmp_path / "node" / "repo", MODEL, "1")
    node = ServeProcess.for_controller(
        tmp_path / "node", app, signing_keys[1], "cam-h", token.token
    )
    second: ControllerApp | None = None

    async def device() -> admin_pb2.Device:
        listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
        return next((d for d in listed.devices if d.device_id == "cam-h"), admin_pb2.Device())

    async def online() -> bool:
        return bool((await device()).online)

    async def offline() -> bool:
        return not (await device()).online

    try:
        await node.start()
        await wait_for(online, 60, "cam-h online", describe=node.log)
        assert await asyncio.to_thread(_online_metric, app, "cam-h") == 1.0
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGSTOP)
        stopped = asyncio.get_running_loop().time()
        try:
            await wait_for(offline, 10, "the hung device to show offline")
            took = asyncio.get_running_loop().time() - stopped
            assert await asyncio.to_thread(_online_metric, app, "cam-h") == 0.0
        finally:
            os.kill(node.process.pid, signal.SIGCONT)
        assert took < 5, took  # 1 s of silence, polled; the stream's keepalive would take 60+ s
        await wait_for(online, 20, "cam-h back after SIGCONT", describe=node.log)

        # Telemetry keeps "last seen" moving; a restarted controller remembers the latest.
        await asyncio.sleep(2.5)
        before = (await device()).last_seen.ToNanoseconds() / 1e9
        await node.stop()
        await admin.__aexit__(None, None, None)
        await app.stop(0.1)
        second = ControllerApp(settings)
        await second.start()
        admin = AdminClient.connect(credential, f"127.0.0.1:{second.port}")
        after = await device()
        assert not after.online
        assert abs(after.last_seen.ToNanoseconds() / 1e9 - before) < 1.0, (before, after.last_seen)
    finally:
        await node.stop()
        await admin.__aexit__(None, None, None)
        for controller in (app, second):
            if controller is not None and controller.services is not None:
                await controller.stop(0.1)


async def test_an_agent_sampling_less_often_than_the_controller_expects_stays_online(
    tmp_path, signing_keys, monkeypatch
):
    """An agent with its own telemetry interval (5 s) longer than the controller's offline
    threshold (1 s) heartbeats at the controller's interval and never shows offline."""
    monkeypatch.setenv("EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S", "5")
    settings = controller_settings(
        tmp_path / "controller", signing_keys[1].parent, offline_after_intervals=5
    )
    app = ControllerApp(settings)
    await app.start()
    admin = AdminClient.connect(
        AdminCredential.load(app.admin_credential_path), f"127.0.0.1:{app.port}"
    )
    token = await admin.stub.CreateEnrollmentToken(admin_pb2.CreateEnrollmentTokenRequest())
    build_model_dir(tmp_path / "node" / "repo", MODEL, "1")
    node = ServeProcess.for_controller(
        tmp_path / "node", app, signing_keys[1], "cam-s", token.token
    )

    async def online() -> bool:
        listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
        return any(d.device_id == "cam-s" and d.online for d in listed.devices)

    try:
        await node.start()
        await wait_for(online, 60, "cam-s online", describe=node.log)
        for _ in range(40):  # 4 s: less than one of its samples, four offline thresholds
            assert await online(), node.log()
            await asyncio.sleep(0.1)
    finally:
        await node.stop()
        await admin.__aexit__(None, None, None)
        await app.stop(0.1)
