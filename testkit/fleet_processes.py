"""`edgefleet serve --controller ...` as a real child process, killed for real."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from fleet.controller.app import ControllerApp
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from tests.fleet.harness import MODEL, wait_for
from tests.fleet.modelgen import FEATURES


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
    process: asyncio.subprocess.Process | None = None
    stderr_path: Path | None = None
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
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    async def start(self) -> None:
        port_file = self.root / "port"
        port_file.unlink(missing_ok=True)
        self.stderr_path = self.root / f"serve-{len(list(self.root.glob('serve-*.log')))}.log"
        stderr = self.stderr_path.open("wb")  # noqa: ASYNC230 - opening a log file
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet.cli", "serve",
            "--repository", str(self.repository), "--port", "0", "--metrics-port", "-1",
            "--http-port", "-1",
            "--port-file", str(port_file), "--planner", "manifest",
            "--controller", self.controllers or f"127.0.0.1:{self.controller_port}",
            "--enroll-address", self.enroll_addresses or f"127.0.0.1:{self.enroll_port}",
            "--controller-ca", str(self.ca), "--enroll-token", self.token,
            "--device-id", self.device_id, "--agent-state", str(self.state_dir),
            "--trusted-key", str(self.trusted_key), "--label", "site=lobby", *self.extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        stderr.close()

        def ready() -> bool:
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"serve exited {self.process.returncode}:\n{self.log()}")
            return port_file.exists() and port_file.read_text().strip() != ""

        await wait_for(ready, 60, "serve to listen", describe=self.log)
        self.port = int(port_file.read_text())

    async def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, exactly what a power cut does."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode or 0

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
