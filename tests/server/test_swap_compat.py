"""A version that cannot take what the serving version's clients send is refused at install
(issue 24, item 5): a hot swap to a version whose input signature or camera-frame capability
differs from what open streams use, or that fails on a real photo (zeros pass), is refused
with the reason, and the old version keeps serving the open stream without an error.
`edgefleet model check` makes the same check against the older version beside it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.manifest import (
    Batching,
    ModelManifest,
    Preprocess,
    TensorSpec,
    hash_directory,
    write_manifest,
)
from testkit.camera import camera, collect
from testkit.edge import server_settings
from testkit.fleet import wait_for
from testkit.fleet_models import build_model_dir, build_poisoned_model_dir
from testkit.repositories import ONNX_MODEL, copy_model

SIDE = 8  # the small image models' input: 3x8x8


def _image_model(repository: Path, name: str, version: str) -> Path:
    """A working 3x8x8 image classifier (Flatten, MatMul) with a camera preprocess section."""
    rng = np.random.default_rng(int(version))
    head = numpy_helper.from_array(
        rng.standard_normal((3 * SIDE * SIDE, 10)).astype(np.float32), "head"
    )
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "head"], ["logits"]),
        ],
        f"{name}_v{version}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[head],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir = repository / name / version
    version_dir.mkdir(parents=True)
    onnx.save(model, version_dir / "model.onnx")
    write_manifest(
        version_dir,
        ModelManifest(
            name=name, version=version, format="onnx", model_file="model.onnx",
            inputs=[TensorSpec(name="input", dtype="float32", shape=["N", 3, SIDE, SIDE])],
            outputs=[TensorSpec(name="logits", dtype="float32", shape=["N", 10])],
            batching=Batching(max_batch_size=8, max_queue_delay_us=500),
            preprocess=Preprocess(input="input", height=SIDE, width=SIDE),
            files=hash_directory(version_dir),
        ),
    )  # fmt: skip
    return version_dir


def _without_preprocess(repository: Path, built_models: Path) -> str:
    """EfficientNet-Lite0 version 2 without its preprocess section: same tensors, no frames."""
    version_dir = copy_model(built_models, ONNX_MODEL, repository, version="2")
    path = version_dir / "manifest.json"
    path.unlink()  # break the hard link before writing
    manifest = json.loads((built_models / ONNX_MODEL / "1" / "manifest.json").read_text())
    manifest.pop("preprocess")
    manifest["version"] = "2"
    path.write_text(json.dumps(manifest, indent=2))
    return ONNX_MODEL


def _other_inputs(repository: Path, built_models: Path) -> str:
    """Version 2 of the same name: a 256-feature vector model, no preprocess."""
    build_model_dir(repository, ONNX_MODEL, "2")
    return ONNX_MODEL


def _fails_on_photos(repository: Path, built_models: Path) -> str:
    """Same 3x8x8 signature as version 1, passes warm-up on zeros, fails on every real frame."""
    _image_model(repository, "cam", "1")
    build_poisoned_model_dir(repository, "cam", "2", image=True)
    return "cam"


@pytest.mark.parametrize(
    ("make_version_2", "reason"),
    [
        (_without_preprocess, "has no preprocess section, so it cannot take camera frames"),
        (_other_inputs, "input input float32['N', 3, 224, 224] became input float32['N', 256]"),
        (_fails_on_photos, "smoke test on a real photo failed"),
    ],
    ids=["no-camera-frames", "other-input-signature", "fails-on-a-real-photo"],
)
async def test_a_swap_that_would_break_open_streams_is_refused_and_v1_keeps_serving(
    tmp_path: Path,
    built_models: Path,
    make_version_2: Callable[[Path, Path], str],
    reason: str,
):
    repository = tmp_path / "repo"
    copy_model(built_models, ONNX_MODEL, repository)
    model = make_version_2(repository, built_models)
    # Boot on version 1 (the agent's boot order does the same: the desired version).
    server = EdgeServer(
        server_settings(repository, models=(model,)), boot_order=lambda name, versions: ["1"]
    )
    await server.start()
    try:
        assert server.core.active_version(model) == "1"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            frames = fs_grpc.FrameStreamServiceStub(channel)
            kserve_stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            refused = asyncio.Event()
            after: list[Any] = []

            async def until_refused_and_then_some():
                sent_after = 0
                async for request in camera(
                    model, ["chelsea", "coffee"], 2000, fps=20, policy=fs.OVERLOAD_POLICY_BLOCK
                ):
                    if refused.is_set():
                        sent_after += 1
                        if sent_after > 10:
                            return
                    yield request

            stream = asyncio.create_task(collect(frames.Stream(until_refused_and_then_some())))
            await wait_for(lambda: server.core.active_streams, 30, "the camera stream to open")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await kserve_stub.RepositoryModelLoad(
                    kserve.RepositoryModelLoadRequest(model_name=model)
                )
            refused.set()
            seen = await asyncio.wait_for(stream, 60)
            after = seen["result"][-5:]
            assert server.core.active_version(model) == "1"
    finally:
        await server.stop(grace_s=0.5)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = failed.value.details() or ""
    assert reason in details, details
    assert "cannot replace version 1 (which keeps serving)" in details or "smoke" in reason
    assert not seen["error"], seen["error"][:3]
    assert len(after) == 5 and all(result.model_version == "1" for result in after)


def test_model_check_refuses_what_a_hot_swap_would(tmp_path: Path, built_models: Path):
    repository = tmp_path / "repo"
    copy_model(built_models, ONNX_MODEL, repository)
    _without_preprocess(repository, built_models)
    _fails_on_photos(repository, built_models)

    def check(directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet.cli", "model", "check", str(directory)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    no_frames = check(repository / ONNX_MODEL / "2")
    assert no_frames.returncode == 1
    assert "cannot take camera frames" in no_frames.stderr, no_frames.stderr
    poisoned = check(repository / "cam" / "2")
    assert poisoned.returncode == 1
    assert "smoke test on a real photo failed" in poisoned.stderr, poisoned.stderr
    assert check(repository / ONNX_MODEL / "1").returncode == 0
    assert check(repository / "cam" / "1").returncode == 0


async def test_a_version_retired_by_a_swap_counts_as_an_unload(tmp_path: Path, built_models: Path):
    repository = tmp_path / "repo"
    copy_model(built_models, ONNX_MODEL, repository)
    server = EdgeServer(server_settings(repository))
    await server.start()
    try:
        copy_model(built_models, ONNX_MODEL, repository, version="2")
        assert await server.core.load_model(ONNX_MODEL, "2") == "2"
        events = server.metrics.registry.get_sample_value
        labels = {"model": ONNX_MODEL, "event": "unload"}
        assert events("edgefleet_model_events_total", {**labels, "version": "1"}) == 1
        assert events("edgefleet_model_events_total", {**labels, "version": "2"}) is None
    finally:
        await server.stop(grace_s=0.5)
