"""fleetctl as an operator runs it: a real subprocess against a real controller."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from protos.edgefleet.fleet.v1 import admin_pb2
from tests.fleet.modelgen import build_model_dir

FLEETCTL = [sys.executable, "-m", "fleet.ctl.cli"]


async def fleetctl(*args: str, credential: Path | None = None) -> tuple[int, str, str]:
    extra = ["--credential", str(credential)] if credential else []
    process = await asyncio.create_subprocess_exec(
        *FLEETCTL, *args, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


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
