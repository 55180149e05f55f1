"""Telemetry: the agent's bounded store-and-forward buffer, and what operators read back (history,
Prometheus labelled by device and model version)."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleet.agent.spool import TelemetrySpool
from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import controller_settings, scrape_controller, start_node, wait_for


def test_spool_is_bounded_counts_drops_and_survives_a_restart(tmp_path):
    spool = TelemetrySpool(tmp_path / "t.db", max_samples=3)
    for index in range(5):
        spool.put(f"sample-{index}".encode())
    assert spool.dropped() == 2
    rows = spool.peek(10)
    assert [payload for _, payload in rows] == [b"sample-2", b"sample-3", b"sample-4"]
    spool.ack(rows[0][0])
    spool.close()

    reopened = TelemetrySpool(tmp_path / "t.db", max_samples=3)
    assert [payload for _, payload in reopened.peek(10)] == [b"sample-3", b"sample-4"]
    assert reopened.dropped() == 2
    reopened.close()


# An agent away and back: seconds.
@pytest.mark.system
async def test_telemetry_reaches_history_and_prometheus_and_is_buffered_while_away(
    tmp_path, signing_keys
):
    settings = controller_settings(tmp_path / "c", signing_keys[1].parent, metrics_port=0)
    controller = ControllerApp(settings)
    await controller.start()
    credential = AdminCredential.load(controller.admin_credential_path)
    admin = AdminClient.connect(credential, f"127.0.0.1:{controller.port}")
    node = await start_node("cam-7", tmp_path / "n", controller, admin, (signing_keys[1],))
    node.start_traffic()
    second = None
    try:
        await wait_for(node.online, 20, "agent online")

        async def served_samples():
            history = await admin.stub.GetTelemetry(
                admin_pb2.GetTelemetryRequest(device_id="cam-7", since_s=3600)
            )
            samples = [json.loads(s.telemetry_json) for s in history.samples]
            return [s for s in samples if s["models"] and s["models"][0]["requests"] > 0]

        samples = await wait_for(served_samples, 20, "telemetry with traffic")
        model = samples[-1]["models"][0]
        assert (model["name"], model["version"]) == ("tiny", "1")
        assert model["fps"] > 0 and model["latency_p95_ms"] > 0

        # What `fleetctl top` shows: one ListDevices call carries the live per-model figures.
        listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
        (live_model,) = listed.devices[0].models
        assert live_model.fps > 0 and live_model.latency_p95_ms > 0 and live_model.requests > 0

        status, text = await asyncio.to_thread(scrape_controller, controller.admin_credential_path)
        assert status == 200, text
        assert 'edgefleet_model_fps{device="cam-7",model="tiny",version="1"}' in text
        assert 'edgefleet_device_online{device="cam-7"} 1.0' in text

        # The controller goes away; the agent keeps sampling into its buffer.
        await admin.__aexit__(None, None, None)
        await controller.stop(0.1)
        await wait_for(lambda: not node.online(), 10, "agent to notice")
        await asyncio.sleep(1.5)
        second = ControllerApp(settings.model_copy(update={"port": controller.port}))
        await second.start()
        admin = AdminClient.connect(credential, f"127.0.0.1:{second.port}")

        async def replayed():
            history = await admin.stub.GetTelemetry(
                admin_pb2.GetTelemetryRequest(device_id="cam-7", since_s=3600)
            )
            return [s for s in history.samples if json.loads(s.telemetry_json)["replayed"]]

        assert await wait_for(replayed, 20, "buffered samples to be forwarded")
    finally:
        await node.stop()
        await admin.__aexit__(None, None, None)
        for app in (controller, second):
            if app is not None and app.services is not None:
                await app.stop(0.1)
