"""The domain core without gRPC: dynamic batching, lease-based retirement, graceful stop."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort

from server.core import InferenceCore
from server.errors import ShuttingDown
from server.models.types import InferRequest
from testkit.edge import server_settings
from testkit.repositories import ONNX_MODEL


async def test_concurrent_requests_share_batches_and_get_their_own_rows(repository, preprocessed):
    core = InferenceCore(server_settings(repository))
    await core.start()
    try:
        names = ["chelsea", "coffee", "astronaut", "rocket"] * 4
        inputs = [preprocessed(name) for name in names]
        responses = await asyncio.gather(
            *(
                core.infer(InferRequest(ONNX_MODEL, {"input": x}, id=str(i)))
                for i, x in enumerate(inputs)
            )
        )
        stats = core.statistics(ONNX_MODEL)[0]
    finally:
        await core.stop()
    # Each caller gets exactly its own row, equal to running it alone in onnxruntime.
    session = ort.InferenceSession(str(repository / ONNX_MODEL / "1" / "model.onnx"))
    for i, (x, response) in enumerate(zip(inputs, responses, strict=True)):
        assert response.id == str(i)
        alone = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(response.outputs[0].array, alone, rtol=1e-4, atol=1e-4)
    assert stats.inference_count == 16
    assert stats.execution_count < 16, "16 concurrent requests never shared a batch"
    assert max(stats.batches) > 1 and max(stats.batches) <= 8


async def test_stop_finishes_in_flight_work_then_refuses(repository, preprocessed):
    core = InferenceCore(server_settings(repository))
    await core.start()
    x = preprocessed("coffee")
    in_flight = [
        asyncio.create_task(core.infer(InferRequest(ONNX_MODEL, {"input": x}))) for _ in range(8)
    ]
    await asyncio.sleep(0)
    await core.stop()
    results = await asyncio.gather(*in_flight)
    assert all(r.outputs[0].array.shape == (1, 1000) for r in results)
    try:
        await core.infer(InferRequest(ONNX_MODEL, {"input": x}))
        raise AssertionError("a stopped core took new work")
    except ShuttingDown:
        pass
