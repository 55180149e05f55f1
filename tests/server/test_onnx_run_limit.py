"""An ONNX model whose run never ends: it runs in the server process, but its file is untrusted
all the same (server/models/backends/onnx.py). A `Loop` whose trip count comes from its input
runs as long as the input asks; past the device's run limit onnxruntime is told to stop, the
request answers DEADLINE_EXCEEDED naming the model and the limit, the stop is counted, the
session keeps serving, and so does every other model. A stopping server stops such a run after
its grace instead of waiting for it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.manifest import Batching, TensorSpec
from testkit.edge import running_server
from testkit.kserve import infer_request, output_array
from testkit.model_writer import write_onnx_version
from testkit.repositories import ONNX_MODEL

pytestmark = pytest.mark.system

FEATURES = 4
RUN_LIMIT_S = 2.0
# A loaded 2-core machine's spread around the limit (the limit is checked every 0.25 s).
SLACK_S = 20.0
FOREVER = 1e12  # loop steps: hours of Sin at about a microsecond each


def _looping_model() -> onnx.ModelProto:
    """y = sin applied max(x) times to x: the input says how long the run takes."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Sin", ["value_in"], ["value_out"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("value_in", TensorProto.FLOAT, ["N", FEATURES]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("value_out", TensorProto.FLOAT, ["N", FEATURES]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["most"], keepdims=0),
            helper.make_node("Cast", ["most"], ["steps"], to=TensorProto.INT64),
            helper.make_node("Loop", ["steps", "", "x"], ["y"], body=body),
        ],
        "loops_as_asked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", FEATURES])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def looping(repository: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEFLEET_SANDBOX_RUN_TIMEOUT_S", str(RUN_LIMIT_S))
    write_onnx_version(
        repository / "loops" / "1",
        _looping_model(),
        name="loops",
        version="1",
        inputs=[TensorSpec(name="x", dtype="float32", shape=["N", FEATURES])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=["N", FEATURES])],
        batching=Batching(max_batch_size=1),
    )
    return repository


def _events(server: EdgeServer, event: str) -> float:
    return float(server.core.metrics.model_events.labels("loops", "1", event)._value.get())


async def test_an_onnx_run_past_the_limit_is_stopped_and_the_model_keeps_serving(looping: Path):
    async with (
        running_server(looping, models=(ONNX_MODEL, "loops")) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        started = time.monotonic()
        # The client's own deadline is far away: the device's limit is what ends the run.
        forever = np.full((1, FEATURES), FOREVER, np.float32)
        pending = asyncio.ensure_future(
            stub.ModelInfer(
                infer_request("loops", forever, input_name="x", output="y"), timeout=120
            )
        )
        # Meanwhile the other model serves.
        image = np.zeros((1, 3, 224, 224), np.float32)
        await stub.ModelInfer(infer_request(ONNX_MODEL, image))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await pending
        elapsed = time.monotonic() - started
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        details = str(failed.value.details())
        assert "loops/1" in details and "2 s" in details and "keeps serving" in details
        assert RUN_LIMIT_S * 0.9 <= elapsed < RUN_LIMIT_S + SLACK_S
        # The same session answers an input that asks for three steps.
        three = np.full((1, FEATURES), 3.0, np.float32)
        answer = output_array(
            await stub.ModelInfer(infer_request("loops", three, input_name="x", output="y"))
        )
        np.testing.assert_allclose(answer, np.sin(np.sin(np.sin(three))), rtol=1e-5)
        assert _events(server, "run_timeout") == 1.0


async def test_a_stopping_server_stops_a_looping_onnx_run_after_its_grace(
    looping: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("EDGEFLEET_SANDBOX_RUN_TIMEOUT_S", "600")
    async with (
        running_server(looping, models=("loops",), shutdown_grace_s=1.0) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        forever = np.full((1, FEATURES), FOREVER, np.float32)
        request = infer_request("loops", forever, input_name="x", output="y")
        pending = asyncio.ensure_future(stub.ModelInfer(request))
        await asyncio.sleep(1.0)  # the run is under way
        started = time.monotonic()
        await server.stop()
        stopped_in = time.monotonic() - started
        with pytest.raises(grpc.aio.AioRpcError):
            await pending
    assert stopped_in < SLACK_S, f"shutdown waited {stopped_in:.1f} s for a looping run"
