"""The hardware planner inside a real server: a plan that cannot fit is refused over gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.hardware.planner import HardwarePlanner
from server.hardware.policy import PlannerSettings
from server.manifest import RuntimePins
from testkit.edge import server_settings
from testkit.hardware import load_profile
from testkit.repositories import ONNX_MODEL


async def test_a_plan_that_cannot_fit_is_refused_with_its_numbers(repository: Path) -> None:
    settings = PlannerSettings(memory_budget_mb=8, pins=RuntimePins(precision="fp32"))
    planner = HardwarePlanner(settings, facts=load_profile("this_machine"))
    server = EdgeServer(server_settings(repository), planner=planner)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            index = await stub.RepositoryIndex(kserve.RepositoryIndexRequest())
            (entry,) = [model for model in index.models if model.name == ONNX_MODEL]
            assert entry.state == "UNAVAILABLE"
            assert "only 8.0 MiB may be used (the 8 MiB memory budget)" in entry.reason
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RepositoryModelLoad(
                    kserve.RepositoryModelLoadRequest(model_name=ONNX_MODEL)
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "weights 17.7 MiB fp32" in (refused.value.details() or "")
    finally:
        await server.stop(grace_s=1.0)
