"""`make fleet-demo`: a controller and three edge nodes on loopback. A new model version goes
out in gated waves with live progress; the final state of every device is printed.

Everything is real: the controller with its CA and SQLite store, three EdgeServers each with a
fleet agent in its event loop, camera-like traffic over KServe gRPC, a signed bundle.

The exit status tells the truth: the demo waits until the rollout has ended and every device
runs what the controller wants (the new version, or the old one after a rollback), and exits 0
only if the rollout succeeded. `--broken` ships a version 2 whose model file is random bytes:
the canary cannot load it, the controller rolls back, the demo exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click
import grpc
import numpy as np

from common.text_table import LiveText
from fleet.agent.agent import Agent
from fleet.agent.settings import AgentSettings
from fleet.bundle import build_bundle
from fleet.controller.app import ControllerApp
from fleet.controller.settings import ControllerSettings
from fleet.ctl.client import AdminClient, AdminCredential
from fleet.ctl.render import devices_table, rollout_view, state_name, why_table
from fleet.keys import generate_keypair, load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.manifest import hash_directory, read_manifest, write_manifest
from server.settings import ServerSettings

MODEL = "efficientnet_lite0"
NODES = ("lobby-cam-1", "lobby-cam-2", "lobby-cam-3")


def _copy_version(source: Path, target: Path) -> None:
    """Copy a model version; the model file is hard-linked (never modified)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)


async def _camera(port: int, manifest_input: str, shape: list[int], fps: float) -> None:
    """A camera-like client: one preprocessed frame every 1/fps seconds, forever."""
    frame = np.random.default_rng(0).standard_normal([1, *shape[1:]]).astype(np.float32)
    request = kserve.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name=manifest_input, datatype="FP32", shape=list(frame.shape))
    request.raw_input_contents.append(frame.tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.ModelInfer(request, timeout=10)
            await asyncio.sleep(1 / fps)


def _broken_copy(source: Path, target: Path) -> Path:
    """A copy of the model version whose model file is random bytes under valid hashes: it
    installs, and the server refuses to load it."""
    shutil.copytree(source, target)
    manifest = read_manifest(target)
    for name in manifest.files:
        if name.endswith(".onnx"):
            (target / name).write_bytes(os.urandom(4096))
    write_manifest(target, manifest.model_copy(update={"files": hash_directory(target)}))
    return target


async def demo(
    repository: Path, workdir: Path, bake_s: float, fps: float, broken: bool = False
) -> bool:
    """Run the demo; True when the rollout succeeded and every device serves version 2."""
    source = repository / MODEL / "1"
    manifest = read_manifest(source)
    input_spec = manifest.inputs[0]
    shape = [1 if not isinstance(dim, int) or dim < 0 else dim for dim in input_spec.shape]

    private_key, public_key = generate_keypair(workdir / "keys", "release")
    controller = ControllerApp(
        ControllerSettings(
            data_dir=workdir / "controller",
            port=0,
            enroll_port=0,
            metrics_port=-1,
            trusted_keys=(public_key,),
            telemetry_interval_s=0.5,
            rollout_tick_s=0.2,
        )
    )
    await controller.start()
    click.echo(f"controller on 127.0.0.1:{controller.port} (mutual TLS)")
    credential = AdminCredential.load(controller.admin_credential_path)
    servers: list[EdgeServer] = []
    agents: list[Agent] = []
    cameras: list[asyncio.Task[None]] = []
    try:
        async with AdminClient.connect(credential) as admin:
            for name in NODES:
                node_repository = workdir / name / "repo"
                _copy_version(source, node_repository / MODEL / "1")
                server = EdgeServer(
                    ServerSettings(
                        repository=node_repository,
                        port=0,
                        metrics_port=-1,
                        http_port=-1,
                        models=(MODEL,),
                    )
                )
                await server.start()
                servers.append(server)
                token = await admin.stub.CreateEnrollmentToken(
                    admin_pb2.CreateEnrollmentTokenRequest(labels={"site": "lobby"})
                )
                agent = Agent(
                    server.core,
                    node_repository,
                    AgentSettings(
                        controller=f"127.0.0.1:{controller.port}",
                        enroll_address=f"127.0.0.1:{controller.enroll_port}",
                        controller_ca=controller.settings.data_dir / "pki" / "ca.pem",
                        enroll_token=token.token,
                        device_id=name,
                        state_dir=workdir / name / "agent",
                        trusted_keys=(public_key,),
                    ),
                )
                await agent.start()
                agents.append(agent)
                cameras.append(
                    asyncio.create_task(_camera(server.port, input_spec.name, shape, fps))
                )
                click.echo(f"edge node {name}: serving {MODEL}/1 on :{server.port}")

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not all(agent.connected for agent in agents):
                if loop.time() > deadline:
                    raise RuntimeError("the agents did not connect to the controller")
                await asyncio.sleep(0.1)
            click.echo("agents enrolled (mutual TLS from now on) and connected")
            shipped = _broken_copy(source, workdir / "broken" / source.name) if broken else source
            bundle = build_bundle(
                shipped, MODEL, "2", load_private_key(private_key), workdir / "bundles"
            )
            click.echo(f"bundle {bundle.name} (signed, Ed25519)")
            uploaded = await admin.upload_bundle(bundle)
            # One bake length of traffic first, so every device has served version 1 for a
            # window before the rollout (the last wave is judged against a control cohort kept
            # on version 1 meanwhile, not against this history).
            await asyncio.sleep(bake_s)
            created = await admin.stub.CreateRollout(
                admin_pb2.CreateRolloutRequest(
                    bundle_sha256=uploaded.bundle_sha256,
                    selector={"site": "lobby"},
                    steps=[33, 66, 100],
                    bake_s=bake_s,
                    # Three servers share this machine's cores: while one loads and warms the
                    # new version the others' requests wait, and a few-second bake sees that in
                    # its tail. The median gates tightly; p95 only catches a real slowdown. No
                    # fps gate: fps is the cameras' frame rate served, not the model's cost.
                    gates=[
                        "p50_latency_ms <= 1.5*baseline + 20",
                        "p95_latency_ms <= 2*baseline + 50",
                        "error_rate < 0.01",
                    ],
                    min_devices=1,
                    # Every device serves at least 20 requests per bake (the default): a p95 of
                    # three requests is their slowest, which is how an identical model once
                    # failed its latency gate.
                    min_requests=20,
                    install_timeout_s=120,
                )
            )
            request = admin_pb2.GetRolloutRequest(rollout_id=created.rollout.rollout_id)
            ended = (
                admin_pb2.ROLLOUT_STATE_SUCCEEDED,
                admin_pb2.ROLLOUT_STATE_ROLLED_BACK,
                admin_pb2.ROLLOUT_STATE_PAUSED,
            )
            with LiveText(sys.stdout) as live:
                while True:
                    rollout = (await admin.stub.GetRollout(request)).rollout
                    live.update(rollout_view(rollout))
                    if rollout.state in ended:
                        break
                    await asyncio.sleep(0.25)
            click.echo()
            succeeded = rollout.state == admin_pb2.ROLLOUT_STATE_SUCCEEDED
            # Wait for the devices to get there (a rollback is a new install on each device);
            # a paused rollout leaves its cohort on 2 and the others on 1 until someone decides.
            want = {
                admin_pb2.ROLLOUT_STATE_SUCCEEDED: "2",
                admin_pb2.ROLLOUT_STATE_ROLLED_BACK: "1",
            }
            deadline = loop.time() + 120
            while rollout.state in want and loop.time() < deadline:
                if {str(server.core.active_version(MODEL)) for server in servers} == {
                    want[rollout.state]
                }:
                    break
                await asyncio.sleep(0.2)
            explained = await admin.stub.ExplainRollout(
                admin_pb2.ExplainRolloutRequest(rollout_id=rollout.rollout_id)
            )
            click.echo(why_table(list(explained.measurements)))
            devices = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
            click.echo(devices_table(list(devices.devices)))
            actual = {str(server.core.active_version(MODEL)) for server in servers}
            click.echo(f"active versions on the edge servers: {sorted(actual)}")
            if succeeded and actual == {"2"}:
                click.echo("rollout SUCCEEDED: every device serves version 2")
                return True
            click.echo(
                f"rollout {state_name(rollout)}"
                f" ({rollout.reason or 'no reason given'}); the devices serve {sorted(actual)}"
            )
            return False
    finally:
        for task in cameras:
            task.cancel()
        await asyncio.gather(*cameras, return_exceptions=True)
        for agent in agents:
            await agent.stop()
        for server in servers:
            await server.stop(grace_s=0.5)
        await controller.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--bake", type=float, default=8.0, help="Seconds each wave bakes.")
    parser.add_argument(
        "--broken", action="store_true", help="Ship a version 2 that cannot load (rolls back)."
    )
    parser.add_argument("--fps", type=float, default=5.0, help="Frames per second per camera.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep state here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        ok = asyncio.run(demo(args.repository, args.workdir, args.bake, args.fps, args.broken))
    else:
        with tempfile.TemporaryDirectory(prefix="fleet-demo-") as workdir:
            ok = asyncio.run(demo(args.repository, Path(workdir), args.bake, args.fps, args.broken))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
