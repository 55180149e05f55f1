"""`edgefleet controller` replicas as real child processes on one PostgreSQL, killed for real."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.fleet.harness import wait_for
from tests.fleet.services import Postgres


@dataclass
class ControllerProcess:
    name: str
    data: Path
    process: asyncio.subprocess.Process
    log_path: Path
    address: str = ""
    enroll_address: str = ""
    metrics_port: int = 0

    @property
    def credential(self) -> Path:
        return self.data / "admin-credential.json"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        """SIGKILL: no lease released, no goodbye, exactly what a crash does."""
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


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
    """One replica on free ports; ready once it wrote its admin credential (the last start
    step). Replicas share `ca_dir`: start the first alone, it creates the CA."""
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / "controller.log"
    environment = {
        **os.environ,
        "EDGEFLEET_CONTROLLER_STORE_PASSWORD": postgres.password,
        "EDGEFLEET_CONTROLLER_ROLLOUT_TICK_S": "0.2",
        "EDGEFLEET_CONTROLLER_TELEMETRY_FLUSH_S": "0.3",
        "EDGEFLEET_CONTROLLER_SHUTDOWN_GRACE_S": "0.2",
    }
    with log_path.open("wb") as log:  # noqa: ASYNC230 - opening a log file
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet.cli", "controller",
            "--data", str(data), "--store", postgres.dsn(database, with_password=False),
            "--port", "0", "--enroll-port", "0", "--metrics-port", "0",
            "--ca-dir", str(ca_dir), "--trusted-key", str(trusted_key_dir),
            "--replica-name", name, "--lease-ttl-s", str(lease_ttl_s),
            "--telemetry-interval-s", "0.25", *extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=log, env=environment,
        )  # fmt: skip
    replica = ControllerProcess(name, data, process, log_path)

    def ready() -> bool:
        if process.returncode is not None:
            raise AssertionError(f"controller {name} exited {process.returncode}:\n{replica.log()}")
        return replica.credential.exists()

    await wait_for(ready, 60, f"controller {name} to start", describe=replica.log)
    credential = json.loads(replica.credential.read_text())
    replica.address = credential["address"].replace("localhost", "127.0.0.1")
    replica.enroll_address = credential["enroll_address"].replace("localhost", "127.0.0.1")
    replica.metrics_port = int(credential["metrics_port"])
    return replica
