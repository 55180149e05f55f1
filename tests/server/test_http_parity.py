"""Issue 22 item 7, the parity choices made explicit (docs/http.md): classification scores as
the manifest says or raw as Triton gives them, the `timeout` parameter honoured, `priority`
accepted and ignored, sequence parameters and shared memory refused as not supported; the same
rules on gRPC (where shared memory used to get "0 values in fp32_contents")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.edge import running_server
from testkit.http import Reply, binary_infer, call
from testkit.kserve import infer_request
from testkit.repositories import ONNX_MODEL


async def infer(port: int, tensor: np.ndarray, **extra: Any) -> Reply:
    """An infer request with JSON outputs and `extra` merged into the JSON header."""
    body, headers = binary_infer(tensor)
    length = int(headers["Inference-Header-Content-Length"])
    header = {**json.loads(body[:length]), **extra}
    encoded = json.dumps(header).encode()
    headers["Inference-Header-Content-Length"] = str(len(encoded))
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/v2/models/{ONNX_MODEL}/infer"
        return await call(session, "POST", url, encoded + body[length:], headers)


def top_score(reply: Reply) -> float:
    assert reply.status == 200, reply.body[:300]
    (output,) = reply.json()["outputs"]
    return float(output["data"][0].split(":", 1)[0])


@pytest.mark.parametrize("scores", ["model", "raw"])
async def test_classification_scores_as_the_manifest_says_or_raw(
    repository: Path, preprocessed, scores: str
):
    tensor = preprocessed("chelsea")
    top1 = [{"name": "logits", "parameters": {"classification": 1}}]
    async with running_server(repository, http_port=0, classification_scores=scores) as server:
        logits_reply = await infer(server.http_port, tensor)
        logits = np.asarray(logits_reply.json()["outputs"][0]["data"], np.float32)
        score = top_score(await infer(server.http_port, tensor, outputs=top1))
    if scores == "raw":  # Triton's: the output value itself
        assert score == pytest.approx(float(logits.max()), abs=1e-5)
    else:  # the manifest asks for softmax: a probability
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert 0 < score <= 1 and score == pytest.approx(float(probabilities.max()), abs=1e-5)


async def test_request_parameters_timeout_priority_and_sequences(repository: Path):
    tensor = np.zeros((1, 3, 224, 224), np.float32)
    async with running_server(repository, http_port=0) as server:
        port = server.http_port
        expired = await infer(port, tensor, parameters={"timeout": 1})  # one microsecond
        assert expired.status == 503 and "request timeout of 1 us expired" in expired.error
        assert server.core.statistics(ONNX_MODEL)[0].fail.count == 1  # counted as a failure
        accepted: list[dict[str, Any]] = [{"timeout": 30_000_000}, {"priority": 3}, {"x": "y"}]
        for parameters in accepted:
            assert (await infer(port, tensor, parameters=parameters)).status == 200
        sequences: list[dict[str, Any]] = [
            {"sequence_id": 5}, {"sequence_start": True}, {"sequence_id": "s"},
        ]  # fmt: skip
        for parameters in sequences:
            reply = await infer(port, tensor, parameters=parameters)
            assert reply.status == 501 and "sequence batching" in reply.error
        malformed: list[dict[str, Any]] = [{"timeout": "1"}, {"timeout": -1}, {"priority": 1.5}]
        for parameters in malformed:
            reply = await infer(port, tensor, parameters=parameters)
            assert reply.status == 400 and reply.error


async def test_shared_memory_is_refused_as_not_supported_on_both_transports(repository: Path):
    region = {"shared_memory_region": "input0", "shared_memory_byte_size": 602112}
    body = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": region}],
    }).encode()  # fmt: skip
    async with (
        running_server(repository, http_port=0) as server,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{server.http_port}/v2/models/{ONNX_MODEL}/infer"
        reply = await call(session, "POST", url, body)
        assert reply.status == 501 and "shared memory is not supported" in reply.error
        request = infer_request(ONNX_MODEL, np.zeros((1, 3, 224, 224), np.float32))
        del request.raw_input_contents[:]
        request.inputs[0].parameters["shared_memory_region"].string_param = "input0"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "shared memory is not supported" in (failure.value.details() or "")


async def test_grpc_applies_the_same_request_parameter_rules(repository: Path):
    async with (
        running_server(repository) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        image = np.zeros((1, 3, 224, 224), np.float32)
        sequence = infer_request(ONNX_MODEL, image)
        sequence.parameters["sequence_id"].int64_param = 5
        expired = infer_request(ONNX_MODEL, image)
        expired.parameters["timeout"].int64_param = 1
        for request, code, fragment in [
            (sequence, grpc.StatusCode.UNIMPLEMENTED, "sequence batching"),
            (expired, grpc.StatusCode.DEADLINE_EXCEEDED, "request timeout of 1 us"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.ModelInfer(request)
            assert failure.value.code() == code
            assert fragment in (failure.value.details() or "")
        patient = infer_request(ONNX_MODEL, image)
        patient.parameters["timeout"].int64_param = 30_000_000
        patient.parameters["priority"].uint64_param = 2
        assert len((await stub.ModelInfer(patient)).outputs) == 1
