"""Devices boot into a good model, always: `edgefleet serve --controller` as real processes,
killed with SIGKILL, against a real controller with signed bundles.

Items 1-4 of issue 11: last known good boot without the controller, a bad version never stops
the server, versions are immutable by bundle digest, cleanup keeps the good versions.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import grpc
import pytest

from fleet.agent.local_state import STATE_FILE, quarantined_copies
from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from server.manifest import hash_directory, read_manifest, write_manifest
from testkit.fleet import MODEL, STATE, controller_settings, rollout_state, signed_bundle, wait_for
from testkit.fleet_models import build_model_dir
from testkit.fleet_processes import ServeProcess

# edgefleet serve --controller as child processes: system tests.
pytestmark = pytest.mark.system


async def _device(admin: AdminClient, device_id: str) -> admin_pb2.Device | None:
    listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
    return next((d for d in listed.devices if d.device_id == device_id and d.online), None)


async def _rollout(admin: AdminClient, bundle, bake_s: float) -> str:
    created = await admin.stub.CreateRollout(
        admin_pb2.CreateRolloutRequest(
            bundle_sha256=bundle.bundle_sha256,
            selector={"site": "lobby"},
            steps=[100],
            bake_s=bake_s,
            min_devices=1,
            install_timeout_s=30,
        )
    )
    return str(created.rollout.rollout_id)


async def _deploy(admin: AdminClient, node: ServeProcess, bundle, version: str) -> None:
    """Roll `bundle` out to the one node and finish the rollout (promote the idle bake)."""
    rollout_id = await _rollout(admin, bundle, bake_s=0.2)

    async def settled():
        rollout = await rollout_state(admin, rollout_id)
        if rollout.state == STATE.ROLLOUT_STATE_PAUSED:
            await admin.stub.PromoteRollout(admin_pb2.PromoteRolloutRequest(rollout_id=rollout_id))
            return None
        return rollout if rollout.state == STATE.ROLLOUT_STATE_SUCCEEDED else None

    await wait_for(settled, 60, f"rollout of {version}", describe=node.log)
    await wait_for(lambda: _serves(node, version), 30, f"{version} serving", describe=node.log)


async def _serves(node: ServeProcess, version: str) -> bool:
    return await node.serving_version() == version


@pytest.fixture
async def fleet(tmp_path, signing_keys):
    settings = controller_settings(tmp_path / "controller", signing_keys[1].parent)
    app = ControllerApp(settings)
    await app.start()
    credential = AdminCredential.load(app.admin_credential_path)
    admin = AdminClient.connect(credential, f"127.0.0.1:{app.port}")
    token = await admin.stub.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(labels={"site": "lobby"})
    )
    root = tmp_path / "node"
    build_model_dir(root / "repo", MODEL, "1")
    node = ServeProcess.for_controller(root, app, signing_keys[1], "cam-a", token.token)
    state: dict[str, Any] = {"app": app, "admin": admin, "node": node, "settings": settings}
    try:
        yield state
    finally:
        await node.stop()
        await state["admin"].__aexit__(None, None, None)
        if state["app"].services is not None:
            await state["app"].stop(0.1)


async def test_rolled_back_version_is_quarantined_and_never_booted(tmp_path, signing_keys, fleet):
    """Items 1 and 4: after a rollback the device boots into the last good version with the
    controller down; cleanup keeps the good versions and drops the bad one first."""
    admin, node = fleet["admin"], fleet["node"]
    await node.start()
    await wait_for(lambda: _device(admin, "cam-a"), 60, "device online", describe=node.log)
    await _deploy(
        admin, node, await admin.upload_bundle(signed_bundle(tmp_path, signing_keys[0], "2")), "2"
    )

    bad = await admin.upload_bundle(signed_bundle(tmp_path, signing_keys[0], "3", seed="3"))
    rollout_id = await _rollout(admin, bad, bake_s=120)
    await wait_for(lambda: _serves(node, "3"), 60, "3 serving", describe=node.log)
    await admin.stub.AbortRollout(
        admin_pb2.AbortRolloutRequest(rollout_id=rollout_id, reason="too slow")
    )
    await wait_for(lambda: _serves(node, "2"), 30, "rolled back to 2", describe=node.log)
    await wait_for(lambda: node.versions_on_disk() == ["1", "2"], 10, "3 quarantined")
    (copy,) = quarantined_copies(node.state_dir, MODEL)
    assert copy.name.startswith("3-")
    local = json.loads((node.state_dir / STATE_FILE).read_text())["models"][MODEL]
    assert local["desired"] == "2" and local["good"][0] == "2"
    assert "rolled back" in local["quarantined"]["3"]

    # Controller down, power cut, boot: the first answer already comes from version 2.
    await fleet["app"].stop(0.1)
    await node.kill()
    await node.start()
    assert await node.serving_version() == "2"

    # Controller back (same port); two more good versions: cleanup keeps the desired, last good
    # and previous good versions and removes the oldest; the quarantined copy went first.
    app = ControllerApp(fleet["settings"].model_copy(update={"port": fleet["app"].port}))
    await app.start()
    fleet["app"] = app
    await fleet["admin"].__aexit__(None, None, None)
    admin = fleet["admin"] = AdminClient.connect(
        AdminCredential.load(app.admin_credential_path), f"127.0.0.1:{app.port}"
    )
    await wait_for(lambda: _device(admin, "cam-a"), 60, "device back", describe=node.log)
    for version in ("4", "5"):
        bundle = signed_bundle(tmp_path, signing_keys[0], version, seed=version)
        await _deploy(admin, node, await admin.upload_bundle(bundle), version)
    await wait_for(lambda: node.versions_on_disk() == ["2", "4", "5"], 10, "cleanup",
                   describe=node.versions_on_disk)  # fmt: skip
    assert len(quarantined_copies(node.state_dir, MODEL)) <= 1


async def test_a_version_that_fails_to_load_never_stops_serve(tmp_path, signing_keys, fleet):
    """Item 2: random bytes under valid hashes install, fail to load, roll back and go to
    quarantine; a bad version found on disk at boot is skipped, reported and quarantined."""
    admin, node = fleet["admin"], fleet["node"]
    node.extra = ["--model", MODEL]  # an operator-named model: before, a bad version was fatal
    await node.start()
    await wait_for(lambda: _device(admin, "cam-a"), 60, "device online", describe=node.log)
    broken = await admin.upload_bundle(signed_bundle(tmp_path, signing_keys[0], "9", broken=True))
    rollout_id = await _rollout(admin, broken, bake_s=0.2)

    async def rolled_back():
        rollout = await rollout_state(admin, rollout_id)
        return rollout if rollout.state == STATE.ROLLOUT_STATE_ROLLED_BACK else None

    rollout = await wait_for(rolled_back, 60, "rollback", describe=node.log)
    assert "failed to install" in rollout.reason
    await wait_for(lambda: node.versions_on_disk() == ["1"], 10, "9 quarantined")
    assert await node.serving_version() == "1"

    # A device whose agent state was lost (or that was imaged with a broken newest version)
    # boots with a bad version 7 on disk: the server skips it and serves 1; the agent
    # quarantines 7 and reports it.
    broken_dir = build_model_dir(tmp_path / "stray", MODEL, "7")
    (broken_dir / "model.onnx").write_bytes(os.urandom(4096))
    manifest = read_manifest(broken_dir)
    write_manifest(broken_dir, manifest.model_copy(update={"files": hash_directory(broken_dir)}))
    broken_dir.rename(node.repository / MODEL / "7")
    await node.kill()
    (node.state_dir / STATE_FILE).unlink()
    await node.start()
    assert await node.serving_version() == "1"
    await wait_for(lambda: node.versions_on_disk() == ["1"], 10, "7 quarantined at boot")
    device = await wait_for(lambda: _device(admin, "cam-a"), 60, "device back")
    assert device.models[0].actual_version == "1"
    assert "version 7 quarantined (failed to load at boot" in node.log()


async def test_versions_are_immutable_by_bundle_digest(tmp_path, signing_keys, fleet):
    """Item 3: the controller refuses a second bundle for a name+version; a device holding other
    content under that version number downloads the bundle's content and reports its digest."""
    admin, node = fleet["admin"], fleet["node"]
    # The device already has a version 2 of its own, with different weights.
    build_model_dir(node.repository, MODEL, "2")
    local_model = (node.repository / MODEL / "2" / "model.onnx").read_bytes()
    await node.start()
    await wait_for(lambda: _device(admin, "cam-a"), 60, "device online", describe=node.log)

    path = signed_bundle(tmp_path, signing_keys[0], "2", seed="5")
    bundle = await admin.upload_bundle(path)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.upload_bundle(signed_bundle(tmp_path, signing_keys[0], "2", seed="6"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "immutable" in (refused.value.details() or "")
    again = await admin.upload_bundle(path)
    assert again.bundle_sha256 == bundle.bundle_sha256  # the same bytes: accepted, idempotent
    assert not list((fleet["app"].settings.data_dir / "uploads").iterdir())

    await _deploy(admin, node, bundle, "2")
    installed = (node.repository / MODEL / "2" / "model.onnx").read_bytes()
    assert installed != local_model
    source = tmp_path / "build-2-5-False" / MODEL / "5" / "model.onnx"
    assert hashlib.sha256(installed).digest() == hashlib.sha256(source.read_bytes()).digest()
    local = json.loads((node.state_dir / STATE_FILE).read_text())["models"][MODEL]
    assert local["installed"]["2"] == bundle.bundle_sha256
