"""`edgefleet serve --controller ...`: the agent runs inside the edge server process."""

from __future__ import annotations

import asyncio
import signal
import sys

from protos.edgefleet.fleet.v1 import admin_pb2
from tests.fleet.harness import wait_for
from tests.fleet.modelgen import build_model_dir


async def test_serve_with_controller_enrolls_and_reports(tmp_path, controller, admin, signing_keys):
    build_model_dir(tmp_path / "repo", "tiny", "1")
    token = await admin.stub.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(labels={"site": "dock"})
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli", "serve",
        "--repository", str(tmp_path / "repo"), "--port", "0", "--metrics-port", "-1",
        "--http-port", "-1",
        "--planner", "manifest",
        "--controller", f"127.0.0.1:{controller.port}",
        "--enroll-address", f"127.0.0.1:{controller.enroll_port}",
        "--controller-ca", str(controller.settings.data_dir / "pki" / "ca.pem"),
        "--enroll-token", token.token, "--device-id", "dock-cam",
        "--agent-state", str(tmp_path / "agent"), "--trusted-key", str(signing_keys[1]),
        "--label", "rack=7",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def reported():
            if process.returncode is not None:
                stderr = await process.stderr.read()  # type: ignore[union-attr]
                raise AssertionError(f"serve exited early: {stderr.decode()[-600:]}")
            listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
            return [
                device
                for device in listed.devices
                if device.online and device.models and device.models[0].actual_version == "1"
            ]

        (device,) = await wait_for(reported, 60, "the serving process's agent to report")
        assert device.device_id == "dock-cam"
        assert dict(device.labels) == {"site": "dock", "rack": "7"}
        assert device.agent_version
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()[-2000:]
