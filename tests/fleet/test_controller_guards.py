"""Rollouts and the controller (issue 11, items 7-10): pins win over rollouts and rollbacks, a
superseded rollout cannot be rolled back, a store failure neither kills a rollout's driver nor
loses telemetry. Real controller, real agents and edge servers, a real SQLite lock."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import grpc
import pytest

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import (
    MODEL,
    STATE,
    controller_settings,
    finished,
    rollout_request,
    rollout_state,
    start_node,
    start_nodes,
    upload,
    wait_for,
)


async def _state(admin, rollout_id: str, state: int):
    rollout = await rollout_state(admin, rollout_id)
    return rollout if rollout.state == state else None


async def _desired(admin, device_id: str) -> tuple[str, str]:
    listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
    device = next(d for d in listed.devices if d.device_id == device_id)
    return next(((m.desired_version, m.actual_version) for m in device.models), ("", ""))


async def test_pins_win_and_superseded_rollouts_cannot_roll_back(
    tmp_path, controller, admin, signing_keys
):
    nodes = await start_nodes(tmp_path, 2, controller, admin, (signing_keys[1],), traffic=False)
    try:
        by_id = {node.name: node for node in nodes}
        # pin validates: an unknown model, a version without a bundle that the device lacks.
        for model, version in (("nope", "1"), (MODEL, "7")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.stub.PinDevice(
                    admin_pb2.PinDeviceRequest(device_id="cam-0", model_name=model, version=version)
                )
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value.details()

        v2 = await upload(admin, tmp_path, signing_keys, "2")
        created = await admin.stub.CreateRollout(
            rollout_request(v2, steps=[50, 100], gates=[], bake_s=60, min_requests=1)
        )
        rollout_id = created.rollout.rollout_id
        engine = controller.services.engine
        await wait_for(lambda: engine.get(rollout_id).waves[0].devices, 20, "wave 0")
        (first,) = engine.get(rollout_id).waves[0].devices
        other = next(name for name in by_id if name != first)
        await wait_for(lambda: by_id[first].active() == "2", 30, "wave 0 installed")

        # Pinned mid-rollout, the other device stays on 1 through the next wave.
        await admin.stub.PinDevice(
            admin_pb2.PinDeviceRequest(device_id=other, model_name=MODEL, version="1")
        )
        await admin.stub.PromoteRollout(admin_pb2.PromoteRolloutRequest(rollout_id=rollout_id))
        await admin.stub.PromoteRollout(admin_pb2.PromoteRolloutRequest(rollout_id=rollout_id))
        done = await wait_for(lambda: finished(admin, rollout_id), 30, "rollout to finish")
        assert done.state == STATE.ROLLOUT_STATE_SUCCEEDED, done.reason
        await asyncio.sleep(1.0)
        assert by_id[other].active() == "1"
        assert await _desired(admin, other) == ("1", "1")

        # A newer rollout supersedes it: rolling back the old one is refused, clearly.
        v3 = await upload(admin, tmp_path, signing_keys, "3")
        newer = await admin.stub.CreateRollout(
            rollout_request(v3, steps=[100], gates=[], bake_s=60, min_requests=1)
        )
        await wait_for(lambda: by_id[first].active() == "3", 30, "3 installed")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.stub.RollbackRollout(
                admin_pb2.RollbackRolloutRequest(rollout_id=rollout_id)
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"superseded by rollout {newer.rollout.rollout_id}" in (
            refused.value.details() or ""
        )

        # Rolling back the latest one moves the unpinned device back, never the pinned one.
        await admin.stub.RollbackRollout(
            admin_pb2.RollbackRolloutRequest(rollout_id=newer.rollout.rollout_id)
        )
        await wait_for(lambda: by_id[first].active() == "2", 30, "rolled back to 2")
        assert await _desired(admin, other) == ("1", "1")
        assert by_id[other].active() == "1"
    finally:
        for node in nodes:
            await node.stop()


@pytest.fixture
async def sqlite_controller(tmp_path, signing_keys):
    """SQLite, whose lock another process can hold; writes give up after 0.2 s."""
    settings = controller_settings(
        tmp_path / "controller", signing_keys[1].parent, store_busy_timeout_s=0.2
    )
    app = ControllerApp(settings)
    await app.start()
    credential = AdminCredential.load(app.admin_credential_path)
    async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as client:
        yield app, client
    await app.stop(0.2)


# A rollout through a store outage: seconds.
@pytest.mark.system
async def test_a_store_outage_neither_kills_the_rollout_nor_loses_telemetry(
    tmp_path, sqlite_controller, signing_keys, caplog
):
    controller, admin = sqlite_controller
    caplog.set_level(logging.INFO, logger="fleet.controller")
    node = await start_node("cam-0", tmp_path / "n0", controller, admin, (signing_keys[1],))
    node.start_traffic()
    await wait_for(lambda: node.online(), 20, "agent online")
    v2 = await upload(admin, tmp_path, signing_keys, "2")
    created = await admin.stub.CreateRollout(
        rollout_request(v2, steps=[100], gates=[], bake_s=2.0, min_requests=1)
    )
    rollout_id = created.rollout.rollout_id
    await wait_for(lambda: _state(admin, rollout_id, STATE.ROLLOUT_STATE_BAKING), 30, "baking")
    # Another writer holds the store for 5 s: every write in that window fails, the verdict at
    # the end of the bake and the telemetry flushes among them.
    blocker = sqlite3.connect(controller.settings.data_dir / "controller.db", timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    locked_at = time.time()
    await asyncio.sleep(5)
    blocker.execute("ROLLBACK")
    unlocked_at = time.time()
    blocker.close()
    try:
        done = await wait_for(lambda: finished(admin, rollout_id), 60, "rollout after the outage")
        assert done.state == STATE.ROLLOUT_STATE_SUCCEEDED, done.reason
        assert node.active() == "2"
        assert any("driver failed" in r.message for r in caplog.records)
        assert controller.services.engine.driver_failures >= 1
        history = await admin.stub.GetTelemetry(
            admin_pb2.GetTelemetryRequest(device_id="cam-0", since_s=120, limit=1000)
        )
        during = [
            s
            for s in history.samples
            if locked_at + 0.5 < s.received_at.ToNanoseconds() / 1e9 < unlocked_at - 0.5
        ]
        # 0.2 s telemetry interval: ~30 samples arrived while the store refused writes.
        assert len(during) >= 10, len(during)
        assert any("writing telemetry to the store failed" in r.message for r in caplog.records)
    finally:
        await node.stop()
