"""The default `edgefleet serve` keeps conversion tooling out of the serving process.

A real `edgefleet serve` (hardware planner on, cache empty, so int8 is being converted in the
child) serves EfficientNet-Lite0; after one real request the process reports its modules.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.kserve import infer_request, output_array
from testkit.processes import spawn
from testkit.repositories import ONNX_MODEL

# edgefleet serve as a child process: a system test.
pytestmark = pytest.mark.system

# Never loaded while serving an ONNX model: conversion tooling lives in the child only.
ABSENT = ("onnx", "onnxruntime.quantization", "torch", "skimage", "sympy", "rich", "scipy")


def test_serving_process_holds_no_conversion_tooling(repository: Path, tmp_path: Path) -> None:
    report, go, port_file = tmp_path / "report.json", tmp_path / "go", tmp_path / "port"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    process = spawn(
        [sys.executable, "-m", "testkit.programs.lean_serve", str(report), str(go), "--",
         "--repository", str(repository), "--port", "0", "--metrics-port", "-1",
         "--port-file", str(port_file)],
        tmp_path / "serve.log", env=env, stdout_to_log=False,
    )  # fmt: skip
    try:
        port = process.wait_for_port_file(port_file, 120, poll_s=0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            frame = np.zeros((1, 3, 224, 224), np.float32)
            response = stub.ModelInfer(infer_request(ONNX_MODEL, frame))
            assert output_array(response).shape == (1, 1000)
        go.touch()
        process.wait(60)
    finally:
        process.kill()
    log = process.log()
    assert "int8 pending" in log, log[-2000:]
    modules = set(json.loads(report.read_text())["modules"])
    rss = json.loads(report.read_text())["rss_bytes"]
    print(f"serving process RSS {rss / 2**20:.1f} MiB, {len(modules)} modules")
    loaded = [name for name in ABSENT if name in modules]
    assert not loaded, f"the serving process imported {loaded}"
    assert "onnxruntime" in modules  # the one runtime it does need
