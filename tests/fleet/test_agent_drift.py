"""The agent reconciles actual against desired (issue 24, item 8): a version loaded on the
server's own API, behind the controller's back, is put back to the desired version, and the
drift is counted in the agent, its telemetry and the controller's metrics."""

from __future__ import annotations

import asyncio

import grpc

from protos.edgefleet.fleet.v1 import admin_pb2
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.fleet import MODEL, start_node, wait_for
from testkit.fleet_models import build_model_dir


async def test_a_version_loaded_by_hand_returns_to_the_desired_one(
    tmp_path, controller, admin, signing_keys
):
    node = await start_node(
        "cam-0", tmp_path / "node", controller, admin, (signing_keys[1],),
        reconcile_interval_s=0.3,
    )  # fmt: skip
    try:
        node.start_traffic()
        await wait_for(node.online, 20, "the agent online")
        await admin.stub.PinDevice(
            admin_pb2.PinDeviceRequest(device_id="cam-0", model_name=MODEL, version="1")
        )
        assert node.agent is not None
        agent = node.agent
        await wait_for(lambda: agent.desired_versions().get(MODEL) == "1", 10, "desired 1")
        # By hand: another version copied into the repository and loaded on the server's API.
        build_model_dir(node.repository, MODEL, "2")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            await stub.RepositoryModelLoad(
                kserve.RepositoryModelLoadRequest(model_name=MODEL)  # the newest: 2
            )
        await wait_for(lambda: agent.drift_corrections.get(MODEL, 0) >= 1, 10, "the drift seen")
        await wait_for(lambda: node.active() == "1", 10, "version 1 back")
        metric = "edgefleet_device_drift_corrections_total"
        registry = controller.registry
        await wait_for(
            lambda: (registry.get_sample_value(metric, {"device": "cam-0"}) or 0) >= 1,
            10, "the drift in the controller's metrics",
        )  # fmt: skip
        # Put back once: the desired version stays active, nothing more to correct.
        corrected = agent.drift_corrections[MODEL]
        await asyncio.sleep(1.0)  # three reconcile rounds
        assert node.active() == "1" and agent.drift_corrections[MODEL] == corrected
    finally:
        await node.stop()
