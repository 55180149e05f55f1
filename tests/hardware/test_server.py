"""The hardware planner inside a real server: a plan that cannot fit is refused over gRPC."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import psutil
import pytest

from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.hardware.facts import MemoryFacts
from server.hardware.planner import HardwarePlanner
from server.hardware.policy import PlannerSettings
from server.hardware.probe import probe_hardware
from server.manifest import RuntimePins
from testkit.edge import server_settings
from testkit.hardware import load_profile
from testkit.repositories import ONNX_MODEL, TORCHSCRIPT_MODEL, copy_model


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


async def test_a_torchscript_model_counts_its_worker_process(
    repository: Path, built_models: Path
) -> None:
    """This machine's probed facts, but for its free memory: 200 MiB free does not exist here,
    and only the memory number is replaced. 80% of it holds EfficientNet-Lite0 in ONNX and its
    TorchScript weights and activations, not the 235 MiB worker the TorchScript copy runs in."""
    copy_model(built_models, TORCHSCRIPT_MODEL, repository)
    probed = probe_hardware(nvml=None)
    little = probed.model_copy(update={"memory": MemoryFacts(available_bytes=200 << 20)})
    settings = PlannerSettings(pins=RuntimePins(precision="fp32"))
    server = EdgeServer(server_settings(repository), planner=HardwarePlanner(settings, little))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            index = await stub.RepositoryIndex(kserve.RepositoryIndexRequest())
            states = {model.name: (model.state, model.reason) for model in index.models}
            assert states[ONNX_MODEL][0] == "READY"
            state, reason = states[TORCHSCRIPT_MODEL]
            assert state == "UNAVAILABLE"
            assert "+ worker process 235.0 MiB (estimated, confined)" in reason
            assert "only 160.0 MiB may be used (80% of 200.0 MiB free memory)" in reason
        # Refused before its worker started.
        assert psutil.Process().children() == []
    finally:
        await server.stop(grace_s=1.0)


async def test_the_first_worker_measures_what_the_next_torchscript_plan_counts(
    repository: Path, built_models: Path
) -> None:
    copy_model(built_models, TORCHSCRIPT_MODEL, repository)
    settings = PlannerSettings(pins=RuntimePins(precision="fp32"))
    planner = HardwarePlanner(settings, probe_hardware(nvml=None))
    server = EdgeServer(server_settings(repository), planner=planner)
    await server.start()
    try:
        served = server.core.registry.resolve(TORCHSCRIPT_MODEL, "")
        # Planned before any worker existed: the constant.
        assert "+ worker process 235.0 MiB (estimated, confined)" in served.plan.reasons["memory"]
        (worker,) = psutil.Process().children()
        resident = worker.memory_info().rss
        # Planned again: what the worker reported, before its model (so below its RSS now).
        again = planner.plan(served.version_dir, served.manifest).reasons["memory"]
        match = re.search(r"\+ worker process ([0-9.]+) MiB \(measured, confined\)", again)
        assert match is not None, again
        measured = float(match.group(1)) * (1 << 20)
        assert 64 << 20 < measured < resident
    finally:
        await server.stop(grace_s=1.0)
