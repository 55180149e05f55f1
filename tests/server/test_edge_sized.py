"""Edge-sized: an ONNX-only server never imports torch; TorchScript loads only when needed."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.hardware.gpu import NVML_LIBRARY
from testkit.edge import server_settings
from testkit.kserve import infer_request, output_array
from testkit.repositories import ONNX_MODEL, ROOT, TORCHSCRIPT_MODEL, copy_model


# A server in its own process.
@pytest.mark.system
async def test_onnx_only_server_process_never_imports_torch(repository: Path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testkit.programs.onnx_only_server", str(repository),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report == {"answered": 4000, "torch_imported": False}


def _nvml_loads() -> bool:
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


# Libraries of other roles: the device install has none of them (docs/benchmarks.md,
# "Footprint of each install role"), so a device server must run without them.
OTHER_ROLES = {"torch", "cv2", "onnx", "scipy", "psycopg", "sympy"}


# The real command line (hardware planner, HTTP and metrics on) in its own process.
@pytest.mark.system
async def test_one_model_command_line_server_imports_only_what_it_serves(
    tmp_path: Path, built_models: Path
):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testkit.programs.serve_modules", str(built_models), ONNX_MODEL,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, stderr.decode()[-2000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    assert report.get("answered") == 4000, report.get("error") or stderr.decode()[-2000:]
    modules = set(report["modules"])
    top_level = {name.split(".")[0] for name in modules}
    # OpenCV (the ocr, camera and dev installs) waits for the first frame that needs pixels.
    assert not top_level & OTHER_ROLES
    if not _nvml_loads():
        # No NVIDIA driver, no GPU for NVML to report: its Python wrapper stays out (1.9 MB).
        assert "pynvml" not in top_level


async def test_onnx_and_torchscript_versions_agree(repository, built_models, preprocessed):
    import grpc

    copy_model(built_models, TORCHSCRIPT_MODEL, repository)
    server = EdgeServer(server_settings(repository))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            for name in ("chelsea", "coffee", "astronaut", "rocket"):
                image = preprocessed(name)
                onnx = output_array(await stub.ModelInfer(infer_request(ONNX_MODEL, image)))
                script = output_array(
                    await stub.ModelInfer(infer_request(TORCHSCRIPT_MODEL, image))
                )
                assert int(np.argmax(onnx)) == int(np.argmax(script)), name
                np.testing.assert_allclose(onnx, script, rtol=1e-3, atol=1e-3)
    finally:
        await server.stop(grace_s=1.0)
