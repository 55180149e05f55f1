"""The device install (`pip install edgefleet`, no extras) in a fresh virtualenv, as a device
would have it: lean on disk, and it serves.

Builds the venv from this checkout (a minute or two: pip resolves, builds the wheel with its
protobuf modules, installs onnxruntime, numpy, grpcio...), so it is a system test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from bench.footprint_probe import ServeProcess
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.camera import camera, collect
from testkit.kserve import bytes_elements, infer_request, output_array
from testkit.media import EXPECTED_TOP1
from testkit.repositories import ONNX_MODEL, ROOT, TORCHSCRIPT_MODEL, copy_model

pytestmark = pytest.mark.system

# What only an extra brings: the device never installs them. Nor the CLI stack it once had
# (typer, rich and pygments under it: 13 MB); the command lines are click and plain text.
NOT_ON_A_DEVICE = ("torch", "psycopg", "onnx", "cv2", "grpc_tools", "sympy", "typer", "rich",
                   "pygments", "shellingham", "markdown_it")  # fmt: skip


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900,
    )  # fmt: skip
    return venv


@pytest.fixture(scope="module")
def device_server(device_venv: Path, tmp_path_factory: pytest.TempPathFactory, built_models):
    """The device venv's `edgefleet serve` on a repository with the ONNX classifier and its
    TorchScript twin."""
    repository = tmp_path_factory.mktemp("repo")
    copy_model(built_models, ONNX_MODEL, repository)
    copy_model(built_models, TORCHSCRIPT_MODEL, repository)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    with ServeProcess([str(device_venv / "bin" / "edgefleet")], repository, env=env) as server:
        yield server


@pytest.mark.parametrize("module", NOT_ON_A_DEVICE)
def test_device_install_has_no_heavy_packages(device_venv: Path, module: str):
    found = subprocess.run(
        [str(device_venv / "bin" / "python"), "-c", f"import {module}"],
        capture_output=True, text=True, cwd=device_venv, check=False,
    )  # fmt: skip
    assert found.returncode != 0, f"{module} is importable in the device install"
    assert "ModuleNotFoundError" in found.stderr


async def test_device_install_serves_frames_and_kserve(device_server: ServeProcess, preprocessed):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{device_server.port}") as channel:
        frames = fs_grpc.FrameStreamServiceStub(channel)
        seen = await collect(
            frames.Stream(camera(ONNX_MODEL, ["chelsea", "coffee"], 4,
                                 policy=fs.OVERLOAD_POLICY_BLOCK))
        )  # fmt: skip
        assert not seen["error"] and len(seen["result"]) == 4
        for result in seen["result"]:
            expected = EXPECTED_TOP1[["chelsea", "coffee"][result.sequence % 2]]
            assert result.labels[0].label in expected
        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        response = await kserve.ModelInfer(
            infer_request(ONNX_MODEL, preprocessed("chelsea"), classification=1)
        )
        (top,) = bytes_elements(response.raw_output_contents[0])
        assert top.decode().split(":", 2)[2] in EXPECTED_TOP1["chelsea"]
        logits = await kserve.ModelInfer(infer_request(ONNX_MODEL, preprocessed("coffee")))
        assert output_array(logits).shape == (1, 1000)


async def test_torchscript_model_names_the_extra_and_the_rest_serves(
    device_server: ServeProcess, preprocessed
):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{device_server.port}") as channel:
        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await kserve.ModelInfer(infer_request(TORCHSCRIPT_MODEL, preprocessed("coffee")))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "pip install 'edgefleet[torchscript]'" in (refused.value.details() or "")
        answered = await kserve.ModelInfer(infer_request(ONNX_MODEL, preprocessed("coffee")))
        assert answered.model_name == ONNX_MODEL
    log = device_server.log()
    assert sum("edgefleet[torchscript]" in line for line in log.splitlines()) == 1, log[-3000:]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--help"], "serve"),
        (["serve", "--help"], "--repository"),
        (["model", "check", "--help"], "DIRECTORY"),
        # The hardware tables, printed without rich.
        (["probe", "--no-torch-gpu"], "Hardware facts"),
    ],
)
def test_device_commands_run(device_venv: Path, tmp_path: Path, args: list[str], said: str):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = subprocess.run(
        [str(device_venv / "bin" / "edgefleet"), *args],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert said in run.stdout


def test_a_command_that_needs_an_extra_names_it(device_venv: Path, tmp_path: Path):
    """`edgefleet stream` needs OpenCV (the camera client): one line naming the extra, exit 2,
    no traceback."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = subprocess.run(
        [str(device_venv / "bin" / "edgefleet"), "stream", "pattern:", "--model", ONNX_MODEL],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "pip install 'edgefleet[camera]'" in run.stderr
    assert "Traceback" not in run.stderr
