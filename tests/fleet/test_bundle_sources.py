"""Bundles from any HTTP origin, served by a real nginx: a corrupted mirror is rejected and the
next source tried, a cut-off download resumes with a range request on the next source, the
controller publishes uploads to the origin and agents install from it, and `fleetctl bundles
publish` fills an origin directory."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.agent.sources import BundleSources
from fleet.bundle import build_bundle, sha256_path, verify_bundle
from fleet.keys import TrustedKeys, generate_keypair, load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import MODEL, STATE, rollout_state, start_nodes, wait_for
from testkit.fleet_models import build_model_dir
from testkit.processes import free_port

# Real nginx servers as bundle origins and mirrors: system tests.
pytestmark = pytest.mark.system


@pytest.fixture
def signed(tmp_path: Path, signing_keys: tuple[Path, Path]) -> tuple[Path, str]:
    """A signed bundle of a model with some weight to it, and its sha256."""
    source = build_model_dir(tmp_path / "src", MODEL, "1", slow_layers=200)
    bundle = build_bundle(source, MODEL, "2", load_private_key(signing_keys[0]), tmp_path / "out")
    return bundle, sha256_path(bundle)


def _serve(directory: Path, sha256: str, payload: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{sha256}.efb").write_bytes(payload)


async def test_corrupt_mirror_is_rejected_and_a_cut_download_resumes_on_the_next_source(
    tmp_path, signed, signing_keys, nginx_factory
):
    bundle, sha256 = signed
    data = bundle.read_bytes()
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    _serve(tmp_path / "bad", sha256, bytes(corrupt))  # same size, one byte flipped
    _serve(tmp_path / "cut", sha256, data[: len(data) // 3])  # a mirror holding a third
    _serve(tmp_path / "origin", sha256, data)
    (tmp_path / "empty").mkdir()
    web = nginx_factory({"bad": tmp_path / "bad", "cut": tmp_path / "cut",
                         "origin": tmp_path / "origin", "empty": tmp_path / "empty"})  # fmt: skip
    sources = BundleSources([web.url(name) for name in ("empty", "bad", "cut", "origin")])
    try:
        path = await sources.fetch(sha256, len(data), tmp_path / "agent")
    finally:
        await sources.aclose()

    assert path is not None and sha256_path(path) == sha256
    verify_bundle(path, TrustedKeys.from_paths([signing_keys[1]]))
    log = web.access_log()
    name = f"{sha256}.efb"
    assert log[0] == f'/empty/{name} 404 "-"'
    assert log[1] == f'/bad/{name} 200 "-"'  # downloaded whole, failed its digest
    assert log[2] == f'/cut/{name} 200 "-"'  # a third of the bytes, then the end
    # The origin was asked only for the rest: an HTTP range request from the cut-off byte.
    assert log[3] == f'/origin/{name} 206 "bytes={len(data) // 3}-"', log
    assert len(log) == 4
    assert not list((tmp_path / "agent").glob("*.part"))


async def test_no_good_source_leaves_nothing_behind(tmp_path, signed, nginx_factory):
    bundle, sha256 = signed
    data = bundle.read_bytes()
    _serve(tmp_path / "bad", sha256, data[:-10] + b"0123456789")
    _serve(tmp_path / "long", sha256, data + b"trailing bytes a mirror should never send")
    web = nginx_factory({"bad": tmp_path / "bad", "long": tmp_path / "long"})
    closed = f"http://127.0.0.1:{free_port()}/nothing"  # nobody listens there
    sources = BundleSources([closed, web.url("bad"), web.url("long")], connect_timeout_s=2)
    try:
        path = await sources.fetch(sha256, len(data), tmp_path / "agent")
    finally:
        await sources.aclose()
    assert path is None
    assert not list((tmp_path / "agent").glob(f"{sha256}*"))
    assert [line.split()[1] for line in web.access_log()] == ["200", "200"]


async def test_agents_install_from_the_origin_the_controller_publishes_to(
    tmp_path, signing_keys, nginx_factory
):
    from fleet.controller.app import ControllerApp
    from fleet.ctl.client import AdminClient, AdminCredential
    from testkit.fleet import controller_settings

    origin = tmp_path / "origin"
    (tmp_path / "bad").mkdir()
    app = ControllerApp(
        controller_settings(tmp_path / "controller", signing_keys[1].parent, publish_dir=origin)
    )
    await app.start()
    nodes = []
    try:
        credential = AdminCredential.load(app.admin_credential_path)
        async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as admin:
            source = build_model_dir(tmp_path / "build", MODEL, "1")
            bundle = build_bundle(
                source, MODEL, "2", load_private_key(signing_keys[0]), tmp_path / "b"
            )
            uploaded = await admin.upload_bundle(bundle)
            sha256 = uploaded.bundle_sha256
            assert (origin / f"{sha256}.efb").read_bytes() == bundle.read_bytes()
            # The site mirror holds a tampered copy: every agent must reject it.
            tampered = bytearray(bundle.read_bytes())
            tampered[600] ^= 1  # inside the signed index
            _serve(tmp_path / "bad", sha256, bytes(tampered))
            web = nginx_factory({"mirror": tmp_path / "bad", "origin": origin})
            nodes = await start_nodes(
                tmp_path, 2, app, admin, (signing_keys[1],), traffic=False,
                bundle_sources=(web.url("mirror"), web.url("origin")),
            )  # fmt: skip
            created = await admin.stub.CreateRollout(
                admin_pb2.CreateRolloutRequest(
                    bundle_sha256=sha256, selector={"site": "lobby"}, steps=[100], bake_s=0.1,
                    gates=[], min_devices=1, min_requests=0, install_timeout_s=30,
                )
            )  # fmt: skip
            await wait_for(lambda: all(node.active() == "2" for node in nodes), 60, "v2 active")
            rollout = await rollout_state(admin, created.rollout.rollout_id)
            assert rollout.state != STATE.ROLLOUT_STATE_ROLLED_BACK, rollout.reason
    finally:
        for node in nodes:
            await node.stop()
        await app.stop(0.2)
    requests = web.access_log()
    name = f"{sha256}.efb"
    assert requests.count(f'/mirror/{name} 200 "-"') == 2, requests
    assert requests.count(f'/origin/{name} 200 "-"') == 2, requests


async def test_fleetctl_bundles_publish_verifies_then_publishes(tmp_path, signed, signing_keys):
    bundle, sha256 = signed
    rogue_key, _ = generate_keypair(tmp_path / "rogue", "rogue")
    rogue = build_bundle(
        build_model_dir(tmp_path / "r", MODEL, "1"), MODEL, "3", load_private_key(rogue_key),
        tmp_path / "rogue-out",
    )  # fmt: skip
    origin = tmp_path / "www"

    def publish(path: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "fleet.ctl.cli", "bundles", "publish", str(path),
                   "--to", str(origin), "--trusted-key", str(signing_keys[1])]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    done = await asyncio.to_thread(publish, bundle)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == sha256
    assert (origin / f"{sha256}.efb").read_bytes() == bundle.read_bytes()
    assert (origin / f"{sha256}.efb").stat().st_mode & 0o777 == 0o644
    refused = await asyncio.to_thread(publish, rogue)
    assert refused.returncode == 1
    assert "fleetctl:" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(path.name for path in origin.iterdir()) == [f"{sha256}.efb"]
