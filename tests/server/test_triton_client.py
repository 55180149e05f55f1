"""Triton's own client works unchanged against edgefleet (KServe v2 wire compatibility)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from testkit.media import EXPECTED_TOP1
from testkit.repositories import ONNX_MODEL, ROOT

# Triton's client as a child process: a system test.
pytestmark = pytest.mark.system

STREAM_REQUESTS = 200


async def test_tritonclient_infer_stream_metadata_and_repository(edge_server, repository: Path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testkit.programs.triton_grpc",
        f"127.0.0.1:{edge_server.port}", ONNX_MODEL, str(repository), str(STREAM_REQUESTS),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode == 0, stderr.decode()[-3000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])

    assert report["live"] and report["ready"] and report["model_ready"]
    for name, label in report["labels"].items():
        assert label in EXPECTED_TOP1[name], (name, label)
    assert report["metadata"] == {
        "platform": "onnxruntime_onnx",
        "inputs": [["input", "FP32", [-1, 3, 224, 224]]],
    }
    assert report["config"] == {"max_batch_size": 8, "platform": "onnxruntime_onnx"}
    assert report["index_before"] == [[ONNX_MODEL, "READY"]]
    assert report["stream"] == {
        "ids": STREAM_REQUESTS,
        "all_ids": True,
        "errors": 0,
        "argmaxes": [967],
    }  # fmt: skip  (967 = espresso)
    # Issue 10 item 13: enable_empty_final_response gets its final flag.
    assert report["final_flag"] == {"error": None, "final": True, "argmax": 967}
    assert report["ready_after_unload"] is False
    assert report["ready_after_load"] is True
    assert report["shm"] == "StatusCode.UNIMPLEMENTED"
