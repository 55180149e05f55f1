"""What an operator met in issue 24, item 6, and the pause verb: real controllers, a real edge
node, fleetctl as a subprocess whose stdout is a pipe (a CI log), not a terminal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
from click.testing import CliRunner

import fleet.cli
from fleet.bundle import build_bundle
from fleet.controller.app import ControllerApp
from fleet.controller.settings import ControllerSettings
from fleet.controller.webhooks import rollout_event
from fleet.ctl.client import AdminClient, AdminCredential
from fleet.keys import load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import (
    MODEL,
    STATE,
    controller_settings,
    rollout_request,
    rollout_state,
    start_node,
    wait_for,
)
from testkit.fleet_models import build_model_dir
from testkit.fleet_processes import fleetctl
from testkit.processes import FLEETCTL


def test_webhook_secret_file_is_a_controller_flag(tmp_path: Path, monkeypatch) -> None:
    seen: list[ControllerSettings] = []

    async def run(settings: ControllerSettings) -> None:
        seen.append(settings)

    monkeypatch.setattr(fleet.cli, "_run", run)
    app = click.Group()
    fleet.cli.register(app)
    secret = tmp_path / "webhook-secret"
    secret.write_text("s3cret\n")
    result = CliRunner().invoke(
        app, ["controller", "--data", str(tmp_path), "--webhook-secret-file", str(secret)]
    )
    assert result.exit_code == 0, result.output
    assert seen and seen[0].webhook_secret_file == secret


async def _upload(admin: AdminClient, tmp_path: Path, signing_keys, version: str):
    source = build_model_dir(tmp_path / f"build{version}", MODEL, "1")
    bundle = build_bundle(source, MODEL, version, load_private_key(signing_keys[0]), tmp_path)
    return await admin.upload_bundle(bundle)


async def test_watch_into_a_pipe_prints_changes_only_and_top_prints_one_table(
    tmp_path, controller, admin, nodes, signing_keys
):
    credential = controller.admin_credential_path
    # fleetctl top off a terminal: one table, then it exits (it used to print nothing, forever).
    code, out, err = await fleetctl("top", credential=credential)
    assert code == 0, err
    assert "fleet top" in out and out.count("yes") == 3, out  # three devices online
    uploaded = await _upload(admin, tmp_path, signing_keys, "2")
    created = await admin.stub.CreateRollout(
        rollout_request(uploaded, steps=[100], gates=["error_rate < 0.5"], bake_s=5.0)
    )
    rollout_id = created.rollout.rollout_id
    code, out, err = await fleetctl(
        "rollout", "status", rollout_id, "--watch", credential=credential
    )
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith(tuple("0123456789"))]
    assert lines and "SUCCEEDED" in lines[-1], out
    bodies = [line.split("  ", 1)[1] for line in lines]
    # The bake alone lasts 5 polls; a line only when something changed (not the time).
    assert all(a != b for a, b in zip(bodies, bodies[1:], strict=False)), out
    assert len(lines) <= 8, out
    # Waves are numbered from 1 for people, in the watch line and the status table alike.
    assert "wave 1/1" in lines[-1]


async def test_pause_holds_a_rollout_until_promote(
    tmp_path, controller, admin, nodes, signing_keys
):
    credential = controller.admin_credential_path
    uploaded = await _upload(admin, tmp_path, signing_keys, "2")
    created = await admin.stub.CreateRollout(
        rollout_request(uploaded, gates=["error_rate < 0.5"], bake_s=60.0)
    )
    rollout_id = created.rollout.rollout_id

    async def in_state(state: int) -> admin_pb2.Rollout | None:
        rollout = await rollout_state(admin, rollout_id)
        return rollout if rollout.state == state else None

    await wait_for(lambda: in_state(STATE.ROLLOUT_STATE_BAKING), 30, "the first bake")
    code, out, err = await fleetctl("pause", rollout_id, "-o", "json", credential=credential)
    assert code == 0, err
    assert json.loads(out)["state"] == "PAUSED", out
    await asyncio.sleep(1.0)
    held = await rollout_state(admin, rollout_id)
    assert held.state == STATE.ROLLOUT_STATE_PAUSED and held.current_wave == 0
    audit = await admin.stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest())
    assert "rollout.pause" in [entry.action for entry in audit.entries]
    code, _, err = await fleetctl("promote", rollout_id, credential=credential)
    assert code == 0, err

    async def next_wave() -> bool:
        rollout = await rollout_state(admin, rollout_id)
        return bool(rollout.current_wave == 1 and rollout.state != STATE.ROLLOUT_STATE_PAUSED)

    await wait_for(next_wave, 10, "the next wave")


def test_a_verdict_webhook_carries_the_judged_wave() -> None:
    from fleet.controller.store.records import RolloutRecord, RolloutSpec, RolloutState

    rollout = RolloutRecord(
        rollout_id="r", model_name="m", version="2", bundle_size=1,
        spec=RolloutSpec(bundle_sha256="a" * 64, steps=[50, 100], bake_s=1),
        state=RolloutState.INSTALLING, current_wave=1, created_at=0, updated_at=0,
    )  # fmt: skip
    event = rollout_event(rollout, "rollout.verdict", {"wave": 0, "verdict": "PASS"})
    assert event["wave"] == 0 and event["state"] == "INSTALLING"


async def test_fleetctl_fails_over_to_the_next_replica_mid_watch(
    tmp_path, signing_keys, postgres_server
):
    """A credential that lists several replicas: a dead address is skipped, and a `--watch`
    keeps going when the replica it talks to goes away mid-rollout."""
    database = postgres_server.create_database()
    store = {"store": postgres_server.dsn(database, with_password=False),
             "store_password": postgres_server.password, "ca_dir": tmp_path / "ca",
             "lease_ttl_s": 3.0}  # fmt: skip
    apps: list[ControllerApp] = []
    nodes = []
    try:
        for name in ("a", "b"):
            app = ControllerApp(
                controller_settings(
                    tmp_path / name, signing_keys[1].parent, replica_name=name, **store
                )
            )
            await app.start()
            apps.append(app)
        a, b = apps
        both = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
        async with AdminClient.connect(
            AdminCredential.load(a.admin_credential_path), f"127.0.0.1:{a.port}"
        ) as admin_a:
            node = await start_node(
                "cam-0", tmp_path / "n0", a, admin_a, (signing_keys[1],),
                controller_addresses=f"127.0.0.1:{b.port},127.0.0.1:{a.port}",
            )  # fmt: skip
            nodes.append(node)
            node.start_traffic()
            await wait_for(lambda: node.online(), 30, "the agent connected")
        source = build_model_dir(tmp_path / "build2", MODEL, "1")
        bundle = build_bundle(source, MODEL, "2", load_private_key(signing_keys[0]), tmp_path)
        document = json.loads(a.admin_credential_path.read_text())
        # A dead address first: fleetctl goes on to the live ones.
        document["address"] = "127.0.0.1:1," + both
        credential = tmp_path / "credential.json"
        credential.write_text(json.dumps(document))
        code, out, err = await fleetctl("devices", "-o", "json", credential=credential)
        assert code == 0, err
        assert [device["device_id"] for device in json.loads(out)] == ["cam-0"]
        document["address"] = both
        credential.write_text(json.dumps(document))
        watcher = await asyncio.create_subprocess_exec(
            *FLEETCTL, "deploy", str(bundle), "--steps", "100", "--bake", "6s",
            "--gate", "error_rate < 0.5", "--min-requests", "1", "--min-devices", "1",
            "--selector", "site=lobby",
            "--watch", "--credential", str(credential),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert watcher.stdout is not None
        first = await asyncio.wait_for(watcher.stdout.readline(), 60)
        assert b"rollout" in first, first
        # The replica fleetctl talks to (the first listed) goes away mid-rollout.
        await a.stop(0.2)
        apps.remove(a)
        rest, err_bytes = await asyncio.wait_for(watcher.communicate(), 90)
        out = (first + rest).decode()
        assert watcher.returncode == 0, (out, err_bytes.decode())
        assert "SUCCEEDED" in out, out
    finally:
        for node in nodes:
            await node.stop()
        for app in apps:
            await app.stop(0.2)
