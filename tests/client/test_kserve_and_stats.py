"""The KServe v2 helper against a real server; stats and backoff arithmetic."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.kserve import KServeClient, build_request, parse_response
from client.stats import StreamStats
from client.stream import BackoffPolicy
from protos.inference import grpc_service_pb2 as pb
from testkit.media import EXPECTED_TOP1
from testkit.repositories import ONNX_MODEL


def top1(logits: np.ndarray, labels: list[str]) -> str:
    return labels[int(np.argmax(logits))]


@pytest.fixture
def imagenet_labels(repository: Path) -> list[str]:
    labels: list[str] = (repository / ONNX_MODEL / "1" / "labels.txt").read_text().splitlines()
    return labels


async def test_unary_and_streaming_inference(
    channel: grpc.aio.Channel,
    preprocessed: Callable[[str], np.ndarray],
    imagenet_labels: list[str],
) -> None:
    client = KServeClient(channel)
    assert await client.server_ready()
    assert await client.model_ready(ONNX_MODEL)
    outputs = await client.infer(ONNX_MODEL, {"input": preprocessed("chelsea")})
    assert outputs["logits"].shape == (1, 1000) and outputs["logits"].dtype == np.float32
    assert top1(outputs["logits"][0], imagenet_labels) in EXPECTED_TOP1["chelsea"]

    async def batches() -> AsyncIterator[Mapping[str, np.ndarray]]:
        yield {"input": preprocessed("coffee")}
        yield {"input": np.zeros((1, 3, 5, 5), np.float32)}  # wrong shape: that one fails
        yield {"input": preprocessed("chelsea")}

    results = [result async for result in client.stream_infer(ONNX_MODEL, batches())]
    assert len(results) == 3
    good = [r for r in results if r.error is None]
    assert len(good) == 2 and len([r for r in results if r.error]) == 1
    tops = {top1(r.outputs["logits"][0], imagenet_labels) for r in good}
    assert tops & EXPECTED_TOP1["coffee"] and tops & EXPECTED_TOP1["chelsea"]

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.infer("no_such_model", {"input": preprocessed("chelsea")})
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


def test_tensor_round_trip_keeps_dtype_shape_and_values() -> None:
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    request = build_request("m", {"x": array})
    assert request.inputs[0].datatype == "INT16" and list(request.inputs[0].shape) == [2, 3, 4]
    response = pb.ModelInferResponse(raw_output_contents=request.raw_input_contents)
    response.outputs.add(name="x", datatype="INT16", shape=[2, 3, 4])
    np.testing.assert_array_equal(parse_response(response)["x"], array)


def test_latency_percentiles_fps_and_result_age() -> None:
    stats = StreamStats()
    for index in range(100):
        stats.record_result((index + 1) / 1000, 0, ("cat",), now_monotonic=10.0 + index * 0.04)
    p50, p95, p99 = stats.latency_percentiles_ms()
    assert (
        p50 == pytest.approx(50.5) and p95 == pytest.approx(95.05) and p99 == pytest.approx(99.01)
    )
    # 25 results a second, measured over the last 5 s window.
    assert stats.fps(now_monotonic=10.0 + 99 * 0.04) == pytest.approx(25.0)
    assert stats.snapshot().last_labels == ("cat",)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = BackoffPolicy(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.delay_s(attempt, rng) for attempt in range(1, 9)]
    bases = [min(1.0, 0.1 * 2 ** (attempt - 1)) for attempt in range(1, 9)]
    assert all(base / 2 <= delay <= base for delay, base in zip(delays, bases, strict=True))
    assert len(set(delays)) == len(delays), "jitter should spread reconnects"
