"""fleetctl as an operator runs it: a real subprocess against a real controller."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import controller_settings, rollout_state, wait_for
from testkit.fleet_models import build_model_dir
from testkit.fleet_processes import ServeProcess, fleetctl

# fleetctl and edgefleet serve as child processes: system tests.
pytestmark = pytest.mark.system


async def test_keys_package_enroll_and_listings_in_json(tmp_path, controller, admin):
    credential = controller.admin_credential_path
    code, out, _ = await fleetctl("keys", "generate", "--dir", str(tmp_path / "k"))
    assert code == 0 and "key id" in out
    model_dir = build_model_dir(tmp_path / "src", "tiny", "1")
    code, out, err = await fleetctl(
        "package", str(model_dir), "--name", "tiny", "--version", "4",
        "--key", str(tmp_path / "k" / "release.key"), "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert code == 0, err
    assert Path(out.strip()).name.startswith("tiny-4-")

    code, out, err = await fleetctl("enroll", "--labels", "site=lobby", credential=credential)
    assert code == 0, err
    token = out.strip()
    assert len(token) > 20

    code, out, err = await fleetctl("devices", "-o", "json", credential=credential)
    assert code == 0, err
    assert json.loads(out) == []
    code, out, err = await fleetctl("top", "--once", "-o", "json", credential=credential)
    assert code == 0 and json.loads(out) == [], err
    code, out, err = await fleetctl("audit", "-o", "json", credential=credential)
    assert code == 0, err
    assert [entry["action"] for entry in json.loads(out)] == ["enrollment-token.create"]

    # Deploy with a bad gate: a clear INVALID_ARGUMENT, nothing created.
    code, _, err = await fleetctl("why", "-o", "json", credential=credential)
    assert code == 1 and "NOT_FOUND" in err
    listed = await admin.stub.ListRollouts(admin_pb2.ListRolloutsRequest())
    assert not listed.rollouts


async def test_fleetctl_without_a_credential_is_refused(tmp_path, controller):
    code, _, err = await fleetctl("devices", credential=tmp_path / "missing.json")
    assert code == 2 and "no admin credential" in err


async def test_steering_verbs_work_at_the_top_level(controller):
    """`fleetctl promote/abort/rollback` are aliases of `fleetctl rollout ...` (issue 11, 13)."""
    credential = controller.admin_credential_path
    for verb in ("promote", "abort", "rollback"):
        code, _, err = await fleetctl(verb, "no-such-rollout", credential=credential)
        assert code == 1 and "NOT_FOUND" in err, (verb, code, err)


def _verbs() -> dict[str, list[str]]:
    """Every fleetctl verb ("rollout status", ...) and its options, from the CLI itself."""
    from fleet.ctl.cli import app

    def walk(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, list[str]]]:
        commands = getattr(command, "commands", None)
        if commands:
            for name, sub in commands.items():
                yield from walk(sub, (*prefix, name))
        else:
            yield " ".join(prefix), [param.name for param in command.params]

    return dict(walk(app))


def _strict(text: str) -> Any:
    """Parse as RFC 8259 JSON: NaN and Infinity are refused."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"not plain JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _no_embedded_json(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert not key.endswith("_json"), key
            _no_embedded_json(item)
    elif isinstance(value, list):
        for item in value:
            _no_embedded_json(item)


async def test_every_verb_speaks_one_json_style(tmp_path, signing_keys):
    """`--output json` on every verb (issue 11, item 13): plain JSON, numbers as numbers,
    embedded JSON as objects, zero values present; `--watch` prints progress into a pipe.
    A real controller, a real `edgefleet serve` device, fleetctl as a subprocess."""
    app = ControllerApp(controller_settings(tmp_path / "controller", signing_keys[1].parent))
    await app.start()
    credential = app.admin_credential_path
    admin = AdminClient.connect(AdminCredential.load(credential), f"127.0.0.1:{app.port}")
    outputs: dict[str, Any] = {}
    node: ServeProcess | None = None

    async def run(verb: str, *args: str, expect: int = 0, with_credential: bool = True) -> Any:
        code, out, err = await fleetctl(
            *verb.split(), *args, "-o", "json", credential=credential if with_credential else None
        )
        assert code == expect, (verb, args, code, out, err)
        if expect == 3:  # --watch: JSON Lines
            return [_strict(line) for line in out.splitlines()]
        parsed = _strict(out)
        _no_embedded_json(parsed)
        outputs[verb] = parsed
        return parsed

    async def wait_state(rollout_id: str, state: int) -> None:
        async def reached() -> bool:
            return bool((await rollout_state(admin, rollout_id)).state == state)

        await wait_for(reached, 60, f"rollout {rollout_id} in {state}")

    try:
        keys = await run("keys generate", "--dir", str(tmp_path / "k"), with_credential=False)
        assert set(keys) == {"private_key", "public_key", "key_id"}
        bundles = []
        for version in ("2", "3", "4", "5"):
            model_dir = build_model_dir(tmp_path / f"src{version}", "tiny", version)
            packaged = await run(
                "package", str(model_dir), "--name", "tiny", "--version", version,
                "--key", str(signing_keys[0]), "--out", str(tmp_path / "b"),
                with_credential=False,
            )  # fmt: skip
            assert packaged["version"] == version and isinstance(packaged["size"], int)
            bundles.append(packaged["bundle"])
        published = await run(
            "bundles publish", bundles[0], "--to", str(tmp_path / "origin"),
            "--trusted-key", str(signing_keys[1]), with_credential=False,
        )  # fmt: skip
        assert published[0]["path"].endswith(".efb") and len(published) == 1
        enrolled = await run("enroll", "--labels", "site=lobby")
        assert isinstance(enrolled["token"], str) and enrolled["expires_at"].endswith("Z")

        build_model_dir(tmp_path / "node" / "repo", "tiny", "1")
        node = ServeProcess.for_controller(
            tmp_path / "node", app, signing_keys[1], "cam-j", enrolled["token"]
        )
        await node.start()

        async def reporting() -> bool:
            listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
            return any(d.online and d.models and d.models[0].actual_version for d in listed.devices)

        await wait_for(reporting, 60, "cam-j reporting", describe=node.log)
        await wait_for(lambda: _telemetry_rows(admin), 30, "telemetry in the store")

        (device,) = await run("devices")
        assert device["device_id"] == "cam-j" and device["online"] is True
        assert isinstance(device["memory_used_bytes"], int) and device["memory_used_bytes"] > 0
        assert isinstance(device["hardware"], dict)  # "{}" under --planner manifest
        assert device["dropped_samples"] == 0 and isinstance(device["cpu_percent"], float)
        assert device["labels"] == {"site": "lobby"}
        (model,) = device["models"]
        assert model["requests"] == 0 and model["errors"] == 0 and model["actual_version"] == "1"
        assert (await run("top"))[0]["device_id"] == "cam-j"
        samples = await run("telemetry", "cam-j")
        assert samples and isinstance(samples[0]["memory_used_bytes"], int)

        async def deploy(bundle: str) -> str:
            rollout = await run(
                "deploy", bundle, "--steps", "100", "--bake", "0.3s", "--min-devices", "1",
                "--min-requests", "1", "--install-timeout", "30s",
            )  # fmt: skip
            assert rollout["state"] == "INSTALLING" and rollout["current_wave"] == 0
            assert rollout["steps"] == [100.0] and rollout["eligible_devices"] == 1
            return str(rollout["rollout_id"])

        # No traffic on the device: every wave is inconclusive and pauses.
        first = await deploy(bundles[0])
        lines = await run("rollout status", first, "--watch", expect=3)
        assert [line["state"] for line in lines][-1] == "PAUSED"
        assert all(line["rollout_id"] == first for line in lines)
        code, out, _ = await fleetctl("rollout", "status", first, "--watch", credential=credential)
        assert code == 3 and f"rollout {first} tiny -> 2: PAUSED" in out, out
        status = await run("rollout status", first)
        assert status["waves"][0]["verdict"] == "INCONCLUSIVE"
        assert (await run("rollout list"))[0]["rollout_id"] == first
        explained = await run("why", first)
        assert explained["rollout"]["rollout_id"] == first and explained["measurements"] == []
        assert (await run("rollout why", first))["rollout"]["state"] == "PAUSED"
        assert (await run("rollout promote", first))["state"] == "SUCCEEDED"
        assert (await run("rollout rollback", first))["state"] == "ROLLED_BACK"

        second = await deploy(bundles[1])
        assert (await run("pause", second))["state"] == "PAUSED"
        assert (await run("abort", second))["state"] == "ROLLED_BACK"
        third = await deploy(bundles[2])
        assert (await run("rollout pause", third))["state"] == "PAUSED"
        assert (await run("rollout abort", third, "--reason", "test"))["reason"] == "test"
        fourth = await deploy(bundles[3])
        await wait_state(fourth, admin_pb2.ROLLOUT_STATE_PAUSED)
        assert (await run("promote", fourth))["state"] == "SUCCEEDED"
        assert (await run("rollback", fourth))["state"] == "ROLLED_BACK"

        pinned = await run("pin", "cam-j", "1", "--model", "tiny")
        assert pinned["models"][0]["desired_source"] == "pin"
        unpinned = await run("rollout pin", "cam-j", "", "--model", "tiny")
        assert unpinned["device_id"] == "cam-j"
        entries = await run("audit", "--limit", "200")
        assert all(isinstance(entry["detail"], dict) for entry in entries)
        created = next(entry for entry in entries if entry["action"] == "rollout.create")
        assert created["detail"]["spec"]["steps"] == [100.0]
        removed = await run("remove", "cam-j")
        assert removed["device_id"] == "cam-j" and len(removed["revoked_key_sha256"]) == 64
    finally:
        if node is not None:
            await node.stop()
        await admin.__aexit__(None, None, None)
        await app.stop(0.1)

    verbs = _verbs()
    assert all("output" in options for options in verbs.values()), verbs
    assert set(outputs) == set(verbs), set(verbs) ^ set(outputs)


async def _telemetry_rows(admin: AdminClient) -> bool:
    history = await admin.stub.GetTelemetry(admin_pb2.GetTelemetryRequest(device_id="cam-j"))
    return bool(history.samples)
