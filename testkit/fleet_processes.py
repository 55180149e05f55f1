"""The fleet as real child processes, killed for real: `edgefleet serve --controller ...`
(an edge server with its agent), `edgefleet controller` (alone or as replicas on one
PostgreSQL), and fleetctl as an operator runs it.

Starting and stopping go through testkit.processes (blocking); the async methods here run them
in a thread so an in-process controller on the test's event loop keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from fleet.controller.app import ControllerApp
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.edge import start_serve
from testkit.fleet import MODEL
from testkit.fleet_models import FEATURES
from testkit.processes import EDGEFLEET, FLEETCTL, Spawned, spawn
from testkit.services import Postgres

# edge servers with their agent


@dataclass
class ServeProcess:
    root: Path
    controller_port: int
    enroll_port: int
    ca: Path
    trusted_key: Path
    device_id: str
    token: str = ""
    extra: list[str] = field(default_factory=list)
    # Several controller replicas ("a:1,b:2"); empty: 127.0.0.1:controller_port.
    controllers: str = ""
    enroll_addresses: str = ""
    process: Spawned | None = None
    port: int = 0

    @classmethod
    def for_controller(
        cls, root: Path, controller: ControllerApp, trusted_key: Path, device_id: str, token: str
    ) -> ServeProcess:
        return cls(
            root=root,
            controller_port=controller.port,
            enroll_port=controller.enroll_port,
            ca=controller.settings.data_dir / "pki" / "ca.pem",
            trusted_key=trusted_key,
            device_id=device_id,
            token=token,
        )

    @property
    def repository(self) -> Path:
        return self.root / "repo"

    @property
    def state_dir(self) -> Path:
        return self.root / "agent"

    def versions_on_disk(self) -> list[str]:
        directory = self.repository / MODEL
        return sorted((p.name for p in directory.iterdir() if p.name.isdigit()), key=int)

    def log(self) -> str:
        """The current run's log (each start writes a new one)."""
        return self.process.log() if self.process else ""

    async def start(self) -> None:
        arguments = (
            "--repository", str(self.repository), "--port", "0", "--metrics-port", "-1",
            "--http-port", "-1", "--planner", "manifest",
            "--controller", self.controllers or f"127.0.0.1:{self.controller_port}",
            "--enroll-address", self.enroll_addresses or f"127.0.0.1:{self.enroll_port}",
            "--controller-ca", str(self.ca), "--enroll-token", self.token,
            "--device-id", self.device_id, "--agent-state", str(self.state_dir),
            "--trusted-key", str(self.trusted_key), "--label", "site=lobby", *self.extra,
        )  # fmt: skip
        self.process = await asyncio.to_thread(
            start_serve, self.root, *arguments, stdout_to_log=False
        )
        self.port = self.process.port

    async def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, exactly what a power cut does."""
        assert self.process is not None
        self.process.kill()

    async def stop(self) -> int:
        if self.process is None:
            return 0
        return await asyncio.to_thread(self.process.stop, 30)

    async def serving_version(self) -> str:
        """The version an unversioned KServe request is answered by; "" when none answers."""
        request = kserve.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
        request.raw_input_contents.append(np.ones((1, FEATURES), np.float32).tobytes())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await stub.ModelInfer(request, timeout=5)
                return str(response.model_version)
        return ""


# controllers


@dataclass
class ControllerProcess:
    """`edgefleet controller --data DATA ...`, ready once it wrote its admin credential (the
    last start step); the addresses and metrics port are read from that credential."""

    data: Path
    process: Spawned
    address: str = ""
    enroll_address: str = ""
    metrics_port: int = 0

    @property
    def name(self) -> str:
        """Its data directory's name (a replica's name)."""
        return self.data.name

    @property
    def credential(self) -> Path:
        return self.data / "admin-credential.json"

    def log(self) -> str:
        return self.process.log()

    def kill(self) -> None:
        """SIGKILL: no lease released, no goodbye, exactly what a crash does."""
        self.process.kill()

    def stop(self, grace_s: float = 30.0) -> int:
        return self.process.stop(grace_s)


def start_controller(
    data: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    stdout_to_log: bool = False,
) -> ControllerProcess:
    """`edgefleet controller --data DATA ARGS` with its log in DATA/controller.log; returns once
    it is ready. Give it ports, store and keys in `args`."""
    data.mkdir(parents=True, exist_ok=True)
    credential = data / "admin-credential.json"
    credential.unlink(missing_ok=True)
    command = [*EDGEFLEET, "controller", "--data", str(data), *args]
    child = spawn(command, data / "controller.log", env=env, stdout_to_log=stdout_to_log)
    try:
        child.wait_until(credential.exists, timeout_s, f"controller in {data} to start", 0.1)
    except BaseException:
        child.kill()
        raise
    written = json.loads(credential.read_text())
    return ControllerProcess(
        data,
        child,
        address=written["address"].replace("localhost", "127.0.0.1"),
        enroll_address=written["enroll_address"].replace("localhost", "127.0.0.1"),
        metrics_port=int(written["metrics_port"]),
    )


async def start_replica(
    name: str,
    root: Path,
    postgres: Postgres,
    database: str,
    ca_dir: Path,
    trusted_key_dir: Path,
    *extra: str,
    lease_ttl_s: float = 3.0,
) -> ControllerProcess:
    """One replica on ports the OS picks, in ROOT/NAME. Replicas share `ca_dir`: start the
    first alone, it creates the CA."""
    environment = {
        **os.environ,
        "EDGEFLEET_CONTROLLER_STORE_PASSWORD": postgres.password,
        "EDGEFLEET_CONTROLLER_ROLLOUT_TICK_S": "0.2",
        "EDGEFLEET_CONTROLLER_TELEMETRY_FLUSH_S": "0.3",
        "EDGEFLEET_CONTROLLER_SHUTDOWN_GRACE_S": "0.2",
    }
    arguments = (
        "--store", postgres.dsn(database, with_password=False),
        "--port", "0", "--enroll-port", "0", "--metrics-port", "0",
        "--ca-dir", str(ca_dir), "--trusted-key", str(trusted_key_dir),
        "--replica-name", name, "--lease-ttl-s", str(lease_ttl_s),
        "--telemetry-interval-s", "0.25", *extra,
    )  # fmt: skip
    return await asyncio.to_thread(start_controller, root / name, *arguments, env=environment)


# fleetctl


async def fleetctl(*args: str, credential: Path | None = None) -> tuple[int, str, str]:
    """`fleetctl ARGS [--credential C]` to completion: (exit status, stdout, stderr)."""
    extra = ["--credential", str(credential)] if credential else []
    process = await asyncio.create_subprocess_exec(
        *FLEETCTL, *args, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
