"""edgefleet's own metadata service: the manifest and the runtime plan of a loaded model."""

from __future__ import annotations

import json

import grpc
import pytest

from protos.edgefleet.v1 import server_info_pb2 as info_pb
from protos.edgefleet.v1 import server_info_pb2_grpc as info_grpc
from testkit.repositories import ONNX_MODEL


async def test_model_info_carries_manifest_and_plan_with_reasons(channel):
    stub = info_grpc.ServerInfoServiceStub(channel)
    info = await stub.GetModelInfo(info_pb.GetModelInfoRequest(name=ONNX_MODEL))
    assert (info.name, info.version, info.active_version) == (ONNX_MODEL, "1", "1")
    assert list(info.loaded_versions) == ["1"]
    manifest = json.loads(info.manifest_json)
    assert manifest["format"] == "onnx" and manifest["files"]["model.onnx"]
    plan = json.loads(info.plan_json)
    assert plan["backend"] == "onnx"
    assert plan["providers"][-1] == "CPUExecutionProvider"
    assert plan["max_batch_size"] == 8 and plan["intra_op_threads"] >= 1
    assert "onnxruntime" in plan["runtime"]
    assert all(isinstance(reason, str) and reason for reason in plan["reasons"].values())


async def test_model_info_for_unknown_model_is_not_found(channel):
    stub = info_grpc.ServerInfoServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GetModelInfo(info_pb.GetModelInfoRequest(name="ghost"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
