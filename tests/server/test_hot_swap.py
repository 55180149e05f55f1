"""Hot swap under live camera load: not one frame lost or errored, each result names its version."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.app import EdgeServer
from server.manifest import hash_directory
from testkit.camera import camera, collect
from testkit.edge import server_settings
from testkit.repositories import ONNX_MODEL, copy_model

SWAPS = 20


def add_shouting_version(repository: Path, built_models: Path) -> None:
    """Version 2: the same network with upper-case labels, so every result proves its version."""
    version_dir = copy_model(built_models, ONNX_MODEL, repository, version="2")
    labels = version_dir / "labels.txt"
    labels.unlink()  # break the hard link before writing
    source = (built_models / ONNX_MODEL / "1" / "labels.txt").read_text()
    labels.write_text(source.upper())
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = hash_directory(version_dir)
    manifest_path.write_text(json.dumps(manifest, indent=2))


# Twenty swaps under 30 fps streams: seconds.
@pytest.mark.system
@pytest.mark.timeout(240)
async def test_twenty_swaps_under_two_30fps_streams_lose_nothing(repository, built_models):
    add_shouting_version(repository, built_models)
    server = EdgeServer(server_settings(repository))
    await server.start()
    assert server.core.active_version(ONNX_MODEL) == "2"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            streams_done = asyncio.Event()
            frames_per_stream = 30 * 40  # upper bound; the streams stop once swapping is over

            async def run_camera(name: str) -> dict[str, list[Any]]:
                requests = camera(
                    ONNX_MODEL, ["chelsea", "coffee"], frames_per_stream, fps=30,
                    policy=fs.OVERLOAD_POLICY_BLOCK, stream_id=name,
                )  # fmt: skip

                async def until_done():
                    async for request in requests:
                        if streams_done.is_set():
                            return
                        yield request

                return await collect(stub.Stream(until_done()))

            cameras = [asyncio.create_task(run_camera(f"cam{i}")) for i in range(2)]
            await asyncio.sleep(0.5)
            swapped_to = []
            for swap in range(SWAPS):
                target = "1" if swap % 2 == 0 else "2"
                assert await server.core.load_model(ONNX_MODEL, target) == target
                swapped_to.append(target)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            streams_done.set()
            results = await asyncio.gather(*cameras)
    finally:
        await server.stop(grace_s=2.0)

    versions_seen = set()
    for seen in results:
        assert not seen["error"], seen["error"][:3]
        assert not seen["dropped"]
        sequences = sorted(result.sequence for result in seen["result"])
        assert sequences == list(range(len(sequences))), "a frame was lost"
        assert len(sequences) > 100
        for result in seen["result"]:
            versions_seen.add(result.model_version)
            label = result.labels[0].label
            shouting = label == label.upper()
            assert shouting == (result.model_version == "2"), (result.model_version, label)
    assert versions_seen == {"1", "2"}
    assert len(swapped_to) == SWAPS


async def test_kept_versions_serve_requests_that_name_them(repository, built_models, preprocessed):
    """versions_kept=2: the previous version stays loaded for requests that name it."""
    from protos.inference import grpc_service_pb2 as kserve
    from protos.inference import grpc_service_pb2_grpc as kserve_grpc
    from testkit.kserve import infer_request

    add_shouting_version(repository, built_models)
    server = EdgeServer(server_settings(repository, versions_kept=2, models=(ONNX_MODEL,)))
    await server.start()
    try:
        await server.core.load_model(ONNX_MODEL, "1")
        await server.core.load_model(ONNX_MODEL, "2")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            index = await stub.RepositoryIndex(kserve.RepositoryIndexRequest(ready=True))
            assert sorted(m.version for m in index.models) == ["1", "2"]
            image = preprocessed("coffee")
            default = await stub.ModelInfer(infer_request(ONNX_MODEL, image, classification=1))
            named = await stub.ModelInfer(
                infer_request(ONNX_MODEL, image, version="1", classification=1)
            )
            assert (default.model_version, named.model_version) == ("2", "1")
            assert default.raw_output_contents[0].endswith(b"ESPRESSO")
            assert named.raw_output_contents[0].endswith(b"espresso")
            await stub.RepositoryModelUnload(
                kserve.RepositoryModelUnloadRequest(model_name=ONNX_MODEL)
            )
            assert not (
                await stub.RepositoryIndex(kserve.RepositoryIndexRequest(ready=True))
            ).models
    finally:
        await server.stop(grace_s=1.0)
