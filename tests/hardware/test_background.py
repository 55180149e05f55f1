"""Ready first, faster later: fp32 serves at once, int8 is converted and judged in a child
process, then hot-swapped in without losing a frame; a dead child leaves fp32 serving.

Real server on port 0, real conversion child, real models. The facts are this machine's
recorded profile (an AVX-512 VNNI CPU), so the int8 path is taken on any CPU.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.hardware.convert_job import MODULE
from server.hardware.planner import HardwarePlanner
from server.hardware.policy import PlannerSettings
from server.manifest import read_manifest
from server.vision.preprocess import to_model_input
from testkit.camera import camera
from testkit.edge import server_settings
from testkit.hardware import load_profile
from testkit.kserve import infer_request, output_array
from testkit.media import EXPECTED_TOP1, photo
from testkit.repositories import ONNX_MODEL
from testkit.tiny_models import write_classifier


def background_planner(tmp_path: Path) -> HardwarePlanner:
    settings = PlannerSettings(cache_dir=tmp_path / "cache", device_key_file=tmp_path / "key")
    return HardwarePlanner(settings, facts=load_profile("this_machine"), background=True)


def conversion_children() -> list[psutil.Process]:
    children = psutil.Process().children(recursive=True)
    return [child for child in children if MODULE in " ".join(child.cmdline())]


async def served_plan(stub: kserve_grpc.GRPCInferenceServiceStub, name: str) -> dict[str, Any]:
    config = (await stub.ModelConfig(kserve.ModelConfigRequest(name=name))).config
    plan: dict[str, Any] = json.loads(config.parameters["edgefleet.plan"].string_value)
    return plan


async def wait_for_plan(
    stub: kserve_grpc.GRPCInferenceServiceStub, name: str, done: Any, timeout_s: float
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        plan = await served_plan(stub, name)
        if done(plan) or asyncio.get_running_loop().time() > deadline:
            return plan
        await asyncio.sleep(0.2)


@pytest.mark.timeout(240)
async def test_serves_fp32_during_conversion_and_survives_a_killed_child(
    repository: Path, tmp_path: Path
) -> None:
    server = EdgeServer(server_settings(repository), planner=background_planner(tmp_path))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            plan = await served_plan(stub, ONNX_MODEL)
            assert (plan["precision"], plan["pending"]) == ("fp32", "int8")
            assert plan["reasons"]["precision"].startswith("fp32 now, int8 pending")

            (child,) = conversion_children()
            # The child runs at a lower priority than the server it must not starve.
            assert child.nice() > psutil.Process().nice()

            # fp32 answers right away, while the conversion is still running.
            spec = read_manifest(repository / ONNX_MODEL / "1").preprocess
            assert spec is not None
            frame = to_model_input(photo("chelsea"), "rgb", spec)
            response = await stub.ModelInfer(infer_request(ONNX_MODEL, frame))
            assert child.is_running()
            labels = (repository / ONNX_MODEL / "1" / "labels.txt").read_text().splitlines()
            assert labels[int(np.argmax(output_array(response)))] in EXPECTED_TOP1["chelsea"]

            child.send_signal(signal.SIGKILL)
            plan = await wait_for_plan(stub, ONNX_MODEL, lambda p: not p["pending"], 30)
            assert plan["precision"] == "fp32" and plan["pending"] == ""
            assert plan["reasons"]["precision"] == (
                "fp32 now, int8 conversion process killed by SIGKILL"
            )
            response = await stub.ModelInfer(infer_request(ONNX_MODEL, frame))
            assert labels[int(np.argmax(output_array(response)))] in EXPECTED_TOP1["chelsea"]
    finally:
        await server.stop(grace_s=1.0)
    assert not conversion_children()


# An int8 conversion in a child process under a live camera: seconds.
@pytest.mark.system
@pytest.mark.timeout(300)
async def test_int8_swaps_in_under_a_live_camera_without_losing_a_frame(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    write_classifier(repository, "tiny", outlier=None)
    server = EdgeServer(server_settings(repository), planner=background_planner(tmp_path))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            assert (await served_plan(stub, "tiny"))["pending"] == "int8"
            stream_stub = fs_grpc.FrameStreamServiceStub(channel)
            stop = asyncio.Event()

            async def frames() -> Any:
                async for request in camera(
                    "tiny", ["chelsea", "coffee"], 30 * 240, fps=30,
                    policy=fs.OVERLOAD_POLICY_BLOCK,
                ):  # fmt: skip
                    if stop.is_set():
                        return
                    yield request

            responses: list[fs.StreamResponse] = []

            async def consume() -> None:
                async for response in stream_stub.Stream(frames()):
                    responses.append(response)

            stream = asyncio.create_task(consume())
            plan = await wait_for_plan(stub, "tiny", lambda p: not p["pending"], 200)
            assert plan["precision"] == "int8", plan["reasons"]["precision"]
            assert plan["reasons"]["precision"].startswith("int8 accepted: the CPU has")
            # The int8 copy lives in the planner's cache: clients see its name, not the path.
            config = (await stub.ModelConfig(kserve.ModelConfigRequest(name="tiny"))).config
            for shown in (plan["model_file"], config.default_model_filename):
                assert shown.startswith("<planner cache>/") and str(tmp_path) not in shown
            before_swap = len(responses)
            await asyncio.sleep(1.5)  # frames keep flowing, now through the int8 copy
            stop.set()
            await stream
    finally:
        await server.stop(grace_s=2.0)
    kinds = [response.WhichOneof("kind") for response in responses]
    assert set(kinds) == {"opened", "result"}, "an error or a dropped frame"
    sequences = sorted(r.result.sequence for r in responses if r.HasField("result"))
    assert sequences == list(range(len(sequences))), "a frame was lost"
    assert 1 < before_swap < len(responses), "frames on both sides of the swap"
