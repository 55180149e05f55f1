"""Fleets in one process for tests: controller settings, real edge nodes (an EdgeServer over its
own repository, the fleet agent in the same event loop, and a traffic generator sending KServe
ModelInfer requests so the telemetry the rollout gates judge is measured, not made up), signed
bundles and rollouts.

The fleet as child processes (`edgefleet serve --controller`, controller replicas, fleetctl) is
in testkit/fleet_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from fleet.agent.agent import Agent
from fleet.agent.settings import AgentSettings
from fleet.bundle import build_bundle
from fleet.controller.app import ControllerApp
from fleet.controller.settings import ControllerSettings
from fleet.ctl.client import AdminClient
from fleet.keys import load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.manifest import hash_directory, read_manifest, write_manifest
from server.settings import ServerSettings
from testkit.fleet_models import FEATURES, build_model_dir

MODEL = "tiny"
STATE = admin_pb2.RolloutState
# Same-speed versions on a shared CPU differ by noise: the pass gates leave room for it.
LENIENT_GATES = ["p95_latency_ms <= 3*baseline + 10", "error_rate < 0.01", "fps >= 0.3*baseline"]


def controller_settings(data_dir: Path, trusted: Path, **overrides: object) -> ControllerSettings:
    """A controller on loopback ports picked by the OS, with seconds-long test intervals."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "port": 0,
        "enroll_port": 0,
        "metrics_port": -1,
        "trusted_keys": (trusted,),
        "telemetry_interval_s": 0.2,
        # Offline after 2 s of silence: a loaded test machine can delay a 0.2 s sample.
        "offline_after_intervals": 10,
        "rollout_tick_s": 0.1,
        "telemetry_flush_s": 0.2,
        "shutdown_grace_s": 0.2,
    }
    values.update(overrides)
    return ControllerSettings.model_validate(values)


@dataclass
class EdgeNode:
    name: str
    root: Path
    server: EdgeServer
    agent_settings: AgentSettings
    agent: Agent | None = None
    traffic: asyncio.Task[None] | None = None
    served: int = 0
    failed: int = 0
    _stop: list[asyncio.Event] = field(default_factory=list)

    @property
    def repository(self) -> Path:
        return self.root / "repo"

    def online(self) -> bool:
        return self.agent is not None and self.agent.connected

    def active(self) -> str | None:
        return self.server.core.active_version(MODEL)

    async def start_agent(self) -> Agent:
        self.agent = Agent(self.server.core, self.repository, self.agent_settings)
        await self.agent.start()
        return self.agent

    async def stop_agent(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
            self.agent = None

    def start_traffic(self, interval_s: float = 0.01) -> None:
        self.traffic = asyncio.create_task(self._drive(interval_s))

    async def _drive(self, interval_s: float) -> None:
        request = kserve.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
        request.raw_input_contents.append(np.ones((1, FEATURES), np.float32).tobytes())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            while True:
                try:
                    await stub.ModelInfer(request, timeout=5)
                    self.served += 1
                except grpc.aio.AioRpcError:
                    self.failed += 1
                await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.traffic
        await self.stop_agent()
        await self.server.stop(grace_s=0.5)


async def start_node(
    name: str,
    root: Path,
    controller: ControllerApp,
    admin: AdminClient,
    trusted_keys: tuple[Path, ...],
    labels: dict[str, str] | None = None,
    server_overrides: dict[str, object] | None = None,
    controller_addresses: str | None = None,
    **agent_overrides: object,
) -> EdgeNode:
    """An edge server serving tiny/1, and its agent enrolled with a fresh one-time token."""
    repository = root / "repo"
    build_model_dir(repository, MODEL, "1")
    server_values: dict[str, object] = {
        "repository": repository,
        "port": 0,
        "metrics_port": -1,
        "http_port": -1,
        "models": (MODEL,),
    }
    server = EdgeServer(ServerSettings.model_validate(server_values | (server_overrides or {})))
    await server.start()
    token = await admin.stub.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(labels=labels or {"site": "lobby"})
    )
    values: dict[str, object] = {
        # Several replicas: "host:port,host:port", tried in turn.
        "controller": controller_addresses or f"127.0.0.1:{controller.port}",
        "enroll_address": f"127.0.0.1:{controller.enroll_port}",
        "controller_ca": (controller.settings.ca_dir or controller.settings.data_dir / "pki")
        / "ca.pem",
        "enroll_token": token.token,
        "device_id": name,
        "state_dir": root / "agent",
        "trusted_keys": trusted_keys,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
    }
    values.update(agent_overrides)
    node = EdgeNode(name, root, server, AgentSettings.model_validate(values))
    await node.start_agent()
    return node


async def start_nodes(
    root: Path,
    count: int,
    controller: ControllerApp,
    admin: AdminClient,
    trusted_keys: tuple[Path, ...],
    *,
    traffic: bool = True,
    online_within_s: float = 20,
    **node_options: object,
) -> list[EdgeNode]:
    """`count` nodes cam-0.. in ROOT/node0.. (options as `start_node`), with traffic unless
    told not to, once every agent is online. On failure the nodes started so far are stopped."""
    nodes: list[EdgeNode] = []
    try:
        for index in range(count):
            node = await start_node(
                f"cam-{index}", root / f"node{index}", controller, admin, trusted_keys,
                **node_options,  # type: ignore[arg-type]
            )  # fmt: skip
            nodes.append(node)
            if traffic:
                node.start_traffic()
        await wait_for(
            lambda: all(node.online() for node in nodes), online_within_s, "agents online"
        )
    except BaseException:
        for node in nodes:
            await node.stop()
        raise
    return nodes


async def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.05, describe=str):
    """Poll `predicate` (sync or async) until truthy; fail with `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {describe()}")
        await asyncio.sleep(poll_s)


def scrape_controller(
    credential: Path, path: str = "/metrics", *, token: str | None = None, port: int = 0
) -> tuple[int, str]:
    """(status, body) of a GET on a controller's metrics port, as Prometheus scrapes it: HTTPS
    checked against the fleet CA, with the scrape token from the admin credential unless
    `token` is given ("" sends none). Blocking: call it through asyncio.to_thread."""
    written = json.loads(credential.read_text())
    context = ssl.create_default_context(cadata=written["ca_pem"])
    port = port or int(written["metrics_port"])
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    token = written["metrics_token"] if token is None else token
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextlib.asynccontextmanager
async def within(seconds: float, what: str):
    """Bound one step of a test: it fails naming the step, and the test's own cleanup still runs
    (pytest-timeout would stop the test without its `finally`, leaving servers behind)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        # Where everything was waiting when time ran out (pytest shows it with the failure).
        for task in asyncio.all_tasks():
            if not task.done():
                print(f"task {task.get_name()} waits in:", file=sys.stderr)
                for frame in task.get_stack(limit=12):
                    code = frame.f_code
                    where = f"{code.co_filename}:{frame.f_lineno} {code.co_name}"
                    print(f"  {where}", file=sys.stderr)
        raise AssertionError(f"{what}: not done within {seconds}s") from None


async def rollout_state(admin: AdminClient, rollout_id: str = ""):
    response = await admin.stub.GetRollout(admin_pb2.GetRolloutRequest(rollout_id=rollout_id))
    return response.rollout


# Bundles and rollouts


def signed_bundle(
    root: Path, signing_key: Path, version: str, *, seed: str = "1", broken: bool = False
) -> Path:
    """A signed bundle of MODEL `version` built under `root`; `seed` picks the weights, `broken`
    makes model.onnx random bytes under valid hashes (it installs, then fails to load)."""
    source = build_model_dir(root / f"build-{version}-{seed}-{broken}", MODEL, seed)
    if broken:
        (source / "model.onnx").write_bytes(os.urandom(4096))
        manifest = read_manifest(source)
        write_manifest(source, manifest.model_copy(update={"files": hash_directory(source)}))
    out = root / f"out-{version}-{seed}-{broken}"
    out.mkdir()
    return build_bundle(source, MODEL, version, load_private_key(signing_key), out)


async def upload(admin, tmp_path, signing_keys, version: str, slow_layers: int = 0):
    """Build MODEL with `slow_layers`, sign it as `version` and upload it; the upload reply."""
    source = build_model_dir(tmp_path / f"build{version}", MODEL, "1", slow_layers=slow_layers)
    bundle = build_bundle(source, MODEL, version, load_private_key(signing_keys[0]), tmp_path)
    return await admin.upload_bundle(bundle)


def rollout_request(bundle, **overrides) -> admin_pb2.CreateRolloutRequest:
    """Three waves over site=lobby with short bakes and strict gates; `overrides` win."""
    values = {
        "bundle_sha256": bundle.bundle_sha256,
        "selector": {"site": "lobby"},
        "steps": [33, 66, 100],
        "bake_s": 1.5,
        "gates": [
            "p95_latency_ms <= 1.5*baseline + 1",
            "error_rate < 0.01",
            "fps >= 0.5*baseline",
        ],
        "min_devices": 1,
        "min_requests": 5,
        "install_timeout_s": 20,
    }
    values.update(overrides)
    return admin_pb2.CreateRolloutRequest(**values)


# The last state `finished` saw per rollout: what a timed-out wait describes.
LAST: dict[str, admin_pb2.Rollout] = {}


async def finished(admin, rollout_id: str) -> admin_pb2.Rollout | None:
    """The rollout once it succeeded or rolled back, else None (a `wait_for` predicate)."""
    rollout = LAST[rollout_id] = await rollout_state(admin, rollout_id)
    done = (STATE.ROLLOUT_STATE_SUCCEEDED, STATE.ROLLOUT_STATE_ROLLED_BACK)
    return rollout if rollout.state in done else None
