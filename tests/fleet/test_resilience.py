"""The fleet survives what the field does to it: agents killed mid-download, a controller
restarted mid-rollout, devices offline during an abort, bad bundles."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from fleet.agent.local_state import quarantined_copies
from fleet.bundle import build_bundle
from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from fleet.keys import generate_keypair, load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import (
    LENIENT_GATES,
    MODEL,
    STATE,
    controller_settings,
    finished,
    rollout_request,
    rollout_state,
    start_node,
    start_nodes,
    wait_for,
)
from testkit.fleet_models import build_model_dir


async def _bundle(tmp_path, signing_key, version: str, padding_bytes: int = 0):
    source = build_model_dir(tmp_path / f"build{version}", MODEL, "1")
    if padding_bytes:
        # An extra payload file makes the bundle big enough to interrupt mid-download.
        from server.manifest import hash_directory, read_manifest, write_manifest

        (source / "extra.bin").write_bytes(os.urandom(padding_bytes))
        manifest = read_manifest(source)
        write_manifest(source, manifest.model_copy(update={"files": hash_directory(source)}))
    return build_bundle(source, MODEL, version, load_private_key(signing_key), tmp_path)


# A download interrupted and resumed: seconds.
@pytest.mark.system
async def test_agent_killed_mid_download_resumes_and_installs(
    tmp_path, controller, admin, signing_keys, caplog
):
    node = await start_node(
        "cam-0", tmp_path / "node", controller, admin, (signing_keys[1],), download_chunk_bytes=1024
    )
    try:
        await wait_for(lambda: node.online(), 20, "agent online")
        path = await _bundle(tmp_path, signing_keys[0], "2", padding_bytes=3 * 1024 * 1024)
        uploaded = await admin.upload_bundle(path)
        await admin.stub.CreateRollout(
            rollout_request(uploaded, steps=[100], bake_s=0.5, gates=[], min_requests=1)
        )
        partial = node.agent_settings.state_dir / "bundles" / f"{uploaded.bundle_sha256}.part"

        def part_size() -> int:
            return partial.stat().st_size if partial.exists() else 0

        await wait_for(lambda: part_size() > 64 * 1024, 30, "download to start", poll_s=0.005)
        await node.stop_agent()  # the process dies: the partial file is all that is left
        held = part_size()
        assert 0 < held < uploaded.size
        assert node.active() == "1"

        caplog.set_level(logging.INFO, logger="fleet.agent.download")
        node.start_traffic()
        await node.start_agent()
        await wait_for(lambda: node.active() == "2", 60, "install after resume")
        resumed = [r.message for r in caplog.records if "resuming bundle" in r.message]
        assert resumed and int(resumed[0].rsplit(" ", 1)[1]) >= held
        assert not partial.exists()
        installed = node.repository / MODEL / "2" / "extra.bin"
        assert installed.stat().st_size == 3 * 1024 * 1024
    finally:
        await node.stop()


# A controller restarted mid-rollout: seconds.
@pytest.mark.system
async def test_controller_restart_mid_rollout_resumes_where_it_was(tmp_path, signing_keys):
    settings = controller_settings(tmp_path / "controller", signing_keys[1].parent)
    first = ControllerApp(settings)
    await first.start()
    credential = AdminCredential.load(first.admin_credential_path)
    nodes = []
    admin = AdminClient.connect(credential, f"127.0.0.1:{first.port}")
    try:
        nodes = await start_nodes(tmp_path, 3, first, admin, (signing_keys[1],))
        uploaded = await admin.upload_bundle(await _bundle(tmp_path, signing_keys[0], "2"))
        created = await admin.stub.CreateRollout(
            rollout_request(uploaded, bake_s=2.0, gates=LENIENT_GATES)
        )
        rollout_id = created.rollout.rollout_id

        async def in_wave_one():
            rollout = await rollout_state(admin, rollout_id)
            return rollout if rollout.current_wave == 1 else None

        before = await wait_for(in_wave_one, 30, "wave 0 to pass")
        assert before.waves[0].verdict == admin_pb2.VERDICT_PASS
        await admin.__aexit__(None, None, None)
        await first.stop(0.1)

        # Same data directory, same port: the agents reconnect on their own.
        second = ControllerApp(settings.model_copy(update={"port": first.port}))
        await second.start()
        admin = AdminClient.connect(credential, f"127.0.0.1:{second.port}")
        try:
            after = await rollout_state(admin, rollout_id)
            assert after.current_wave == 1
            assert after.waves[0].verdict == admin_pb2.VERDICT_PASS
            done = await wait_for(lambda: finished(admin, rollout_id), 60, "rollout to finish")
            assert done.state == STATE.ROLLOUT_STATE_SUCCEEDED, done.reason
            assert [n.active() for n in nodes] == ["2", "2", "2"]
            audit = await admin.stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest())
            assert "rollout.create" in [entry.action for entry in audit.entries]
        finally:
            for node in nodes:
                await node.stop()
            await admin.__aexit__(None, None, None)
            await second.stop(0.1)
    finally:
        if first.services is not None:
            await first.stop(0.1)


async def test_device_offline_during_abort_rolls_back_when_it_returns(
    tmp_path, controller, admin, signing_keys
):
    nodes = []
    try:
        nodes = await start_nodes(tmp_path, 3, controller, admin, (signing_keys[1],))
        uploaded = await admin.upload_bundle(await _bundle(tmp_path, signing_keys[0], "2"))
        created = await admin.stub.CreateRollout(
            rollout_request(uploaded, bake_s=30.0, gates=LENIENT_GATES)
        )
        canary = await wait_for(
            lambda: next((n for n in nodes if n.active() == "2"), None), 30, "canary install"
        )
        await canary.stop_agent()
        await admin.stub.AbortRollout(
            admin_pb2.AbortRolloutRequest(rollout_id=created.rollout.rollout_id, reason="test")
        )
        rollout = await rollout_state(admin, created.rollout.rollout_id)
        assert rollout.state == STATE.ROLLOUT_STATE_ROLLED_BACK
        await asyncio.sleep(0.5)
        assert canary.active() == "2", "an offline device cannot have rolled back yet"

        await canary.start_agent()
        await wait_for(lambda: canary.active() == "1", 20, "rollback on reconnect")
        # The rolled-back version 2 is quarantined: no restart can boot into it again.
        await wait_for(lambda: not (canary.repository / MODEL / "2").exists(), 10, "2 quarantined")
        assert quarantined_copies(canary.agent_settings.state_dir, MODEL)
    finally:
        for node in nodes:
            await node.stop()


async def test_wrong_key_and_tampered_bundles_are_rejected_and_v1_keeps_serving(
    tmp_path, signing_keys
):
    # The controller still trusts a key this device no longer does (rotated out).
    retired_key, retired_pub = generate_keypair(tmp_path / "retired", "retired")
    controller = ControllerApp(
        controller_settings(
            tmp_path / "controller",
            signing_keys[1].parent,
            trusted_keys=(signing_keys[1], retired_pub),
        )
    )
    await controller.start()
    credential = AdminCredential.load(controller.admin_credential_path)
    admin = AdminClient.connect(credential, f"127.0.0.1:{controller.port}")
    node = await start_node("cam-0", tmp_path / "node", controller, admin, (signing_keys[1],))
    node.start_traffic()
    try:
        await wait_for(lambda: node.online(), 20, "agent online")
        rogue_key = retired_key
        wrong_key = await admin.upload_bundle(await _bundle(tmp_path, rogue_key, "2"))
        created = await admin.stub.CreateRollout(
            rollout_request(wrong_key, steps=[100], gates=[], install_timeout_s=10)
        )
        rollout = await wait_for(
            lambda: finished(admin, created.rollout.rollout_id), 30, "wrong-key rollout"
        )
        assert rollout.state == STATE.ROLLOUT_STATE_ROLLED_BACK
        assert "not trusted" in rollout.reason
        assert node.active() == "1"

        # Tampered at rest on the controller after upload: the device's sha256 check catches it.
        good = await admin.upload_bundle(await _bundle(tmp_path, signing_keys[0], "3"))
        stored = controller.settings.data_dir / "bundles" / f"{good.bundle_sha256}.efb"
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))
        created = await admin.stub.CreateRollout(
            rollout_request(good, steps=[100], gates=[], install_timeout_s=10)
        )
        rollout = await wait_for(
            lambda: finished(admin, created.rollout.rollout_id), 30, "tampered rollout"
        )
        assert rollout.state == STATE.ROLLOUT_STATE_ROLLED_BACK
        assert "corrupt" in rollout.reason or "tampered" in rollout.reason
        assert node.active() == "1"
        assert not (node.repository / MODEL / "3").exists()
        served = node.served
        await asyncio.sleep(0.3)
        assert node.served > served and node.failed == 0
        assert rollout.waves[0].failed == 1
    finally:
        await node.stop()
        await admin.__aexit__(None, None, None)
        await controller.stop(0.1)


async def test_devices_that_never_install_abort_the_rollout(
    tmp_path, controller, admin, signing_keys
):
    node = await start_node("cam-0", tmp_path / "node", controller, admin, (signing_keys[1],))
    try:
        await wait_for(node.online, 20, "agent online")
        uploaded = await admin.upload_bundle(await _bundle(tmp_path, signing_keys[0], "2"))
        await node.stop_agent()  # offline for the whole wave
        created = await admin.stub.CreateRollout(
            rollout_request(uploaded, steps=[100], gates=[], install_timeout_s=1.0)
        )
        rollout = await wait_for(
            lambda: finished(admin, created.rollout.rollout_id), 20, "the install timeout"
        )
        assert rollout.state == STATE.ROLLOUT_STATE_ROLLED_BACK
        assert "did not install in time" in rollout.reason
        assert rollout.waves[0].timed_out == 1
        assert node.active() == "1"
    finally:
        await node.stop()
