"""The KServe v2 service through a real server, real channel and the real pretrained model."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.kserve import bytes_elements, infer_request, output_array
from testkit.media import EXPECTED_TOP1
from testkit.repositories import ONNX_MODEL


@pytest.fixture
def stub(channel):
    return kserve_grpc.GRPCInferenceServiceStub(channel)


async def test_server_and_model_are_live_and_ready(stub):
    assert (await stub.ServerLive(kserve.ServerLiveRequest())).live
    assert (await stub.ServerReady(kserve.ServerReadyRequest())).ready
    assert (await stub.ModelReady(kserve.ModelReadyRequest(name=ONNX_MODEL))).ready
    assert not (await stub.ModelReady(kserve.ModelReadyRequest(name="nope"))).ready
    meta = await stub.ServerMetadata(kserve.ServerMetadataRequest())
    assert meta.name == "edgefleet" and "classification" in meta.extensions


@pytest.mark.parametrize("photo_name", ["chelsea", "coffee"])
async def test_infer_classifies_real_photos(stub, preprocessed, photo_name):
    response = await stub.ModelInfer(
        infer_request(ONNX_MODEL, preprocessed(photo_name), request_id=f"id-{photo_name}")
    )
    assert response.id == f"id-{photo_name}"
    assert response.model_version == "1"
    logits = output_array(response)
    assert logits.shape == (1, 1000)
    labels = (
        await stub.ModelInfer(infer_request(ONNX_MODEL, preprocessed(photo_name), classification=3))
    ).raw_output_contents[0]
    top1 = bytes_elements(labels)[0].decode()
    score, index, label = top1.split(":", 2)
    assert int(index) == int(np.argmax(logits))
    assert label in EXPECTED_TOP1[photo_name]
    assert 0.2 < float(score) <= 1.0


async def test_batch_of_two_returns_rows_in_order(stub, preprocessed):
    batch = np.concatenate([preprocessed("chelsea"), preprocessed("coffee")])
    response = await stub.ModelInfer(infer_request(ONNX_MODEL, batch, classification=1))
    assert list(response.outputs[0].shape) == [2, 1]
    first, second = (
        item.decode().split(":", 2)[2] for item in bytes_elements(response.raw_output_contents[0])
    )
    assert first in EXPECTED_TOP1["chelsea"] and second in EXPECTED_TOP1["coffee"]


async def test_typed_fp32_contents_match_raw_bytes(stub, preprocessed):
    array = preprocessed("coffee")
    typed = kserve.ModelInferRequest(model_name=ONNX_MODEL)
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=list(array.shape))
    tensor.contents.fp32_contents.extend(array.reshape(-1).tolist())
    from_typed = output_array(await stub.ModelInfer(typed))
    from_raw = output_array(await stub.ModelInfer(infer_request(ONNX_MODEL, array)))
    np.testing.assert_allclose(from_typed, from_raw, rtol=1e-5, atol=1e-5)


async def test_metadata_and_config_describe_the_model_and_plan(stub):
    meta = await stub.ModelMetadata(kserve.ModelMetadataRequest(name=ONNX_MODEL))
    assert meta.platform == "onnxruntime_onnx"
    assert list(meta.versions) == ["1"]
    assert (meta.inputs[0].name, meta.inputs[0].datatype, list(meta.inputs[0].shape)) == (
        "input", "FP32", [-1, 3, 224, 224],
    )  # fmt: skip
    config = (await stub.ModelConfig(kserve.ModelConfigRequest(name=ONNX_MODEL))).config
    assert config.max_batch_size == 8
    assert list(config.input[0].dims) == [3, 224, 224]
    assert config.output[0].label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    plan = json.loads(config.parameters["edgefleet.plan"].string_value)
    assert plan["backend"] == "onnx" and plan["reasons"]["providers"]
    assert "CPUExecutionProvider" in [
        accelerator.name
        for accelerator in config.optimization.execution_accelerators.cpu_execution_accelerator
    ]


async def test_statistics_count_requests_and_batches(stub, preprocessed):
    array = preprocessed("chelsea")
    await asyncio.gather(*(stub.ModelInfer(infer_request(ONNX_MODEL, array)) for _ in range(6)))
    stats = (await stub.ModelStatistics(kserve.ModelStatisticsRequest(name=ONNX_MODEL))).model_stats
    assert len(stats) == 1
    assert stats[0].inference_stats.success.count == 6
    assert stats[0].inference_count == 6
    assert sum(batch.batch_size * batch.compute_infer.count for batch in stats[0].batch_stats) == 6
    assert stats[0].inference_stats.compute_infer.ns > 0
    assert stats[0].last_inference > 0


async def test_repository_index_load_and_unload(stub, preprocessed):
    index = await stub.RepositoryIndex(kserve.RepositoryIndexRequest())
    assert [(m.name, m.version, m.state) for m in index.models] == [(ONNX_MODEL, "1", "READY")]
    await stub.RepositoryModelUnload(kserve.RepositoryModelUnloadRequest(model_name=ONNX_MODEL))
    index = await stub.RepositoryIndex(kserve.RepositoryIndexRequest())
    assert [(m.state, m.reason) for m in index.models] == [("UNAVAILABLE", "unloaded")]
    assert not (await stub.RepositoryIndex(kserve.RepositoryIndexRequest(ready=True))).models
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ModelInfer(infer_request(ONNX_MODEL, preprocessed("chelsea")))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    await stub.RepositoryModelLoad(kserve.RepositoryModelLoadRequest(model_name=ONNX_MODEL))
    response = await stub.ModelInfer(infer_request(ONNX_MODEL, preprocessed("chelsea")))
    assert response.model_version == "1"


async def test_shared_memory_is_unimplemented(stub):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.SystemSharedMemoryRegister(kserve.SystemSharedMemoryRegisterRequest(name="x"))
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CudaSharedMemoryStatus(kserve.CudaSharedMemoryStatusRequest())
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_stream_answers_errors_in_band_and_stays_open(stub, preprocessed):
    good = preprocessed("coffee")
    requests = [
        infer_request(ONNX_MODEL, good, request_id="a"),
        infer_request("missing_model", good, request_id="b"),
        infer_request(ONNX_MODEL, good[:, :2], request_id="c"),
        infer_request(ONNX_MODEL, good, request_id="d"),
    ]

    async def send():
        for request in requests:
            yield request

    answers = {}
    async for response in stub.ModelStreamInfer(send()):
        answers[response.infer_response.id] = response
    assert set(answers) == {"a", "b", "c", "d"}
    assert not answers["a"].error_message and not answers["d"].error_message
    assert "missing_model" in answers["b"].error_message
    assert "shape" in answers["c"].error_message
