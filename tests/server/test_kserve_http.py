"""KServe v2 HTTP/REST: tritonclient.http and plain curl-style JSON against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from server.app import EdgeServer
from testkit.edge import server_settings
from testkit.media import EXPECTED_TOP1
from testkit.repositories import ONNX_MODEL, ROOT

CAT_IDS = {281, 282, 285}


def as_json(body: dict[str, Any]) -> io.BytesIO:
    """A large JSON body as a stream, as curl -d @file sends it (aiohttp warns on big bytes)."""
    return io.BytesIO(json.dumps(body).encode())


@pytest.fixture
async def http_server(repository: Path) -> AsyncIterator[EdgeServer]:
    server = EdgeServer(server_settings(repository, http_port=0))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace_s=1.0)


# Triton's HTTP client as a child process.
@pytest.mark.system
async def test_tritonclient_http_health_metadata_and_infer_with_class_count(http_server):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testkit.programs.triton_http",
        f"127.0.0.1:{http_server.http_port}", ONNX_MODEL,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, stderr.decode()[-3000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["missing_ready"] is False
    assert report["server"] == "edgefleet"
    assert report["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert report["platform"] == "onnxruntime_onnx" and report["max_batch_size"] == 8
    assert len(report["top"]) == 3
    score, index, label = report["top"][0].split(":", 2)
    assert label in EXPECTED_TOP1["chelsea"] and int(index) in CAT_IDS and float(score) > 0.2
    assert report["argmax"] == int(index) and report["logits_shape"] == [1, 1000]
    assert report["success_count"] == 2


async def test_curl_style_json_infer_and_errors(http_server, preprocessed):
    base = f"http://127.0.0.1:{http_server.http_port}"
    tensor = preprocessed("coffee")
    body: dict[str, Any] = {
        "id": "cup-1",
        "inputs": [{"name": "input", "shape": list(tensor.shape), "datatype": "FP32",
                    "data": tensor.reshape(-1).tolist()}],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    }  # fmt: skip
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/v2/health/ready") as reply:
            assert reply.status == 200
        async with session.post(
            f"{base}/v2/models/{ONNX_MODEL}/infer", data=as_json(body)
        ) as reply:
            assert reply.status == 200, await reply.text()
            answer = await reply.json()
        assert answer["id"] == "cup-1" and answer["model_version"] == "1"
        (output,) = answer["outputs"]
        assert output["datatype"] == "BYTES" and output["shape"] == [1, 1]
        assert output["data"][0].split(":", 2)[2] in EXPECTED_TOP1["coffee"]
        body["outputs"] = []
        async with session.post(
            f"{base}/v2/models/{ONNX_MODEL}/versions/1/infer", data=as_json(body)
        ) as reply:
            logits = np.asarray((await reply.json())["outputs"][0]["data"])
        assert logits.shape == (1000,) and int(np.argmax(logits)) == 967  # espresso
        async with session.post(
            f"{base}/v2/models/no_such_model/infer", data=as_json(body)
        ) as reply:
            assert reply.status == 404
            assert "no_such_model" in (await reply.json())["error"]
        body["inputs"][0]["shape"] = [1, 3, 224, 225]
        async with session.post(
            f"{base}/v2/models/{ONNX_MODEL}/infer", data=as_json(body)
        ) as reply:
            assert reply.status == 400
            assert "do not match shape" in (await reply.json())["error"]
        async with session.post(f"{base}/v2/models/{ONNX_MODEL}/infer", data=b"{nope") as reply:
            assert reply.status == 400 and "not JSON" in (await reply.json())["error"]
        # The server still serves after bad requests.
        async with session.get(f"{base}/v2/models/{ONNX_MODEL}/ready") as reply:
            assert reply.status == 200
