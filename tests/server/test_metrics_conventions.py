"""Prometheus conventions on a real server's /metrics endpoint (issue 10, item 16): bounded
`outcome` values, no `_created` series, `process_*` metrics, build and model info, and 404 on
any path but /metrics and /."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.version import EDGEFLEET_VERSION
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.observability.metrics import OUTCOMES
from testkit.edge import server_settings
from testkit.kserve import infer_request
from testkit.repositories import ONNX_MODEL


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_metrics_follow_prometheus_conventions(repository):
    server = EdgeServer(server_settings(repository, metrics_port=0))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(infer_request(ONNX_MODEL, np.zeros((1, 3, 224, 224), np.float32)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # the wrong shape
                await stub.ModelInfer(infer_request(ONNX_MODEL, np.zeros((1, 3, 9, 9), np.float32)))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        base = f"http://127.0.0.1:{server.metrics_port}"
        status, text = await asyncio.to_thread(_get, base + "/metrics")
        root_status, _ = await asyncio.to_thread(_get, base + "/")
        other = [await asyncio.to_thread(_get, base + path) for path in ("/x", "/metrics/x")]
    finally:
        await server.stop(grace_s=1.0)
    assert (status, root_status) == (200, 200)
    assert [code for code, _ in other] == [404, 404]
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = [sample for family in families.values() for sample in family.samples]
    assert not [sample.name for sample in samples if sample.name.endswith("_created")]
    assert "process_resident_memory_bytes" in families
    assert families["process_resident_memory_bytes"].samples[0].value > 10e6
    outcomes = {
        sample.labels["outcome"]: sample.value
        for sample in families["edgefleet_requests"].samples
        if sample.labels["model"] == ONNX_MODEL
    }
    assert outcomes == {"success": 1.0, "invalid_input": 1.0}
    assert set(outcomes) <= set(OUTCOMES)
    (build,) = families["edgefleet_build_info"].samples
    assert build.labels == {"version": EDGEFLEET_VERSION, "component": "server"}
    assert build.value == 1
    info = {sample.labels["model"]: sample for sample in families["edgefleet_model_info"].samples}
    model = info[ONNX_MODEL]
    assert model.value == 1
    assert model.labels["version"] == "1" and model.labels["backend"] == "onnx"
    assert model.labels["provider"] == "CPUExecutionProvider"
    assert model.labels["precision"] in {"fp32", "fp16", "int8"}


async def test_bad_camera_frames_are_counted_and_the_stream_goes_on(repository):
    # A truncated JPEG and a frame that is not a JPEG at all, between good frames, on one live
    # stream: each bad one is answered with an error naming it, counted as a failed request
    # (invalid_input) and as a stream error, and the frames after it are still answered.
    from protos.edgefleet.v1 import frame_stream_pb2 as fs
    from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
    from testkit.media import jpeg_bytes, photo

    good = jpeg_bytes(photo("chelsea"))
    frames = [good, good[: len(good) // 3], good, b"\xff\xd8 not a jpeg", good]

    async def requests():
        yield fs.StreamRequest(
            open=fs.StreamOpen(
                model_name=ONNX_MODEL, encoding=fs.FRAME_ENCODING_JPEG,
                overload_policy=fs.OVERLOAD_POLICY_BLOCK, results=fs.ResultOptions(top_k=1),
            )
        )  # fmt: skip
        for sequence, data in enumerate(frames):
            yield fs.StreamRequest(frame=fs.Frame(sequence=sequence, data=data))

    server = EdgeServer(server_settings(repository, metrics_port=0))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            answers = {}
            async for response in fs_grpc.FrameStreamServiceStub(channel).Stream(requests()):
                kind = response.WhichOneof("kind")
                if kind == "result":
                    answers[response.result.sequence] = "result"
                elif kind == "error":
                    answers[response.error.sequence] = response.error.message
        status, text = await asyncio.to_thread(
            _get, f"http://127.0.0.1:{server.metrics_port}/metrics"
        )
    finally:
        await server.stop(grace_s=1.0)
    assert status == 200
    assert [answers[sequence] == "result" for sequence in range(5)] == [
        True, False, True, False, True,
    ]  # fmt: skip
    assert "JPEG" in answers[1] and "JPEG" in answers[3]
    families = {family.name: family for family in text_string_to_metric_families(text)}

    def counts(family: str) -> dict[str, float]:
        return {
            sample.labels["outcome"]: sample.value
            for sample in families[family].samples
            if sample.labels["model"] == ONNX_MODEL and sample.name.endswith("_total")
        }

    assert counts("edgefleet_requests") == {"success": 3.0, "invalid_input": 2.0}
    stream = counts("edgefleet_stream_frames")
    assert (stream["answered"], stream["error"]) == (3.0, 2.0)
