"""`edgefleet serve --controller ...`: the agent runs inside the edge server process."""

from __future__ import annotations

import asyncio

import pytest

from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.edge import serve_command
from testkit.fleet import wait_for
from testkit.fleet_models import build_model_dir
from testkit.processes import spawn

# edgefleet serve --controller as a child process: a system test.
pytestmark = pytest.mark.system


async def test_serve_with_controller_enrolls_and_reports(tmp_path, controller, admin, signing_keys):
    build_model_dir(tmp_path / "repo", "tiny", "1")
    token = await admin.stub.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(labels={"site": "dock"})
    )
    process = spawn(
        serve_command(
            "--repository", str(tmp_path / "repo"), "--port", "0", "--metrics-port", "-1",
            "--http-port", "-1",
            "--planner", "manifest",
            "--controller", f"127.0.0.1:{controller.port}",
            "--enroll-address", f"127.0.0.1:{controller.enroll_port}",
            "--controller-ca", str(controller.settings.data_dir / "pki" / "ca.pem"),
            "--enroll-token", token.token, "--device-id", "dock-cam",
            "--agent-state", str(tmp_path / "agent"), "--trusted-key", str(signing_keys[1]),
            "--label", "rack=7",
        ),
        tmp_path / "serve.log", stdout_to_log=False,
    )  # fmt: skip
    try:

        async def reported():
            if not process.running:
                raise AssertionError(f"serve exited early: {process.log_tail(600)}")
            listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
            return [
                device
                for device in listed.devices
                if device.online
                and device.models
                and device.models[0].actual_version == "1"
                # The agent's own labels arrive with its hello; on PostgreSQL the device can be
                # listed online (from a replica note) a moment before that hello is stored.
                and dict(device.labels) == {"site": "dock", "rack": "7"}
            ]

        (device,) = await wait_for(reported, 60, "the serving process's agent to report")
        assert device.device_id == "dock-cam"
        assert dict(device.labels) == {"site": "dock", "rack": "7"}
        assert device.agent_version
    finally:
        returncode = await asyncio.to_thread(process.stop, 30)
    assert returncode == 0, process.log_tail(2000)
