"""The Node and C++ camera clients, built by `make stubs`' script, against a real server.

No skip: CI's machine has apt, npm and root, so a toolchain that will not install is a failure
to report, not a reason to pass quietly.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.client.conftest import running_server
from tests.conftest import EXPECTED_TOP1, ONNX_MODEL, ROOT, jpeg_bytes, photo

CPP_CLIENT = ROOT / "build/examples/cpp/edgefleet_camera"
NODE_DIR = ROOT / "client/examples/node"
BUF = NODE_DIR / "node_modules/.bin/buf"
RESULT_LINE = re.compile(r"^frame (\d+) efficientnet_lite0/1: ([^(]+) \((0\.\d+)\)")


@pytest.fixture(scope="module")
def built_examples() -> None:
    """Generate stubs and build both clients once (incremental after the first run)."""
    if CPP_CLIENT.exists() and (NODE_DIR / "node_modules").is_dir():
        # Already generated: rebuild only what changed in the example's source.
        subprocess.run(["make", "-s", "-C", str(ROOT / "client/examples/cpp")], check=True)
        return
    completed = subprocess.run(
        ["bash", str(ROOT / "scripts/gen_stubs.sh")],
        env={**os.environ, "STUBS_QUICK": "1"},  # buf has its own tests below
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


@pytest.fixture
def photo_files(tmp_path: Path) -> list[Path]:
    files = []
    for name in ("chelsea", "coffee"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(jpeg_bytes(photo(name)))
        files.append(path)
    return files


def check_output(output: str) -> None:
    results = [RESULT_LINE.match(line) for line in output.splitlines()]
    top1 = {int(m.group(1)): m.group(2).strip() for m in results if m}
    assert set(top1) == {1, 2}, output
    assert top1[1] in EXPECTED_TOP1["chelsea"], output
    assert top1[2] in EXPECTED_TOP1["coffee"], output
    assert "done: 2/2 frames answered" in output


async def run_client(command: list[str], **env: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    output = stdout.decode()
    assert process.returncode == 0, output
    return output


@pytest.mark.usefixtures("built_examples")
async def test_cpp_client_streams_photos_and_prints_labels(
    repository: Path, photo_files: list[Path]
) -> None:
    async with running_server(repository) as server:
        target = f"127.0.0.1:{server.port}"
        output = await run_client([str(CPP_CLIENT), target, ONNX_MODEL, *map(str, photo_files)])
    check_output(output)


@pytest.mark.usefixtures("built_examples")
async def test_node_client_streams_photos_and_prints_labels_with_a_token(
    repository: Path, photo_files: list[Path]
) -> None:
    async with running_server(repository, auth_token="node-secret") as server:
        target = f"127.0.0.1:{server.port}"
        command = ["node", str(NODE_DIR / "camera.js"), target, ONNX_MODEL, *map(str, photo_files)]
        output = await run_client(command, EDGEFLEET_TOKEN="node-secret")
    check_output(output)


@pytest.mark.usefixtures("built_examples")
def test_buf_lint_is_clean() -> None:
    completed = subprocess.run(
        [str(BUF), "lint", "protos"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.usefixtures("built_examples")
async def test_buf_curl_examples_from_the_readme_work_through_reflection(
    repository: Path, photo_files: list[Path]
) -> None:
    import base64
    import json

    chelsea = base64.b64encode(photo_files[0].read_bytes()).decode()
    requests = json.dumps(
        {"open": {"model_name": ONNX_MODEL, "encoding": "FRAME_ENCODING_JPEG"}}
    ) + json.dumps({"frame": {"sequence": 1, "data": chelsea}})
    async with running_server(repository) as server:
        base = f"http://127.0.0.1:{server.port}"
        curl = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
        services = await run_client([*curl, "--list-services", base])
        process = await asyncio.create_subprocess_exec(
            *curl, "-d", "@-", f"{base}/edgefleet.v1.FrameStreamService/Stream",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(requests.encode()), 60)
    assert "edgefleet.v1.FrameStreamService" in services.split()
    assert process.returncode == 0, stderr.decode()
    decoder = json.JSONDecoder()
    text, messages = stdout.decode().strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    assert messages[0]["opened"]["modelName"] == ONNX_MODEL
    assert messages[1]["result"]["labels"][0]["label"] in EXPECTED_TOP1["chelsea"]


@pytest.mark.usefixtures("built_examples")
def test_buf_breaking_against_the_previous_commit() -> None:
    previous = subprocess.run(
        ["git", "cat-file", "-e", "HEAD~1:protos"], cwd=ROOT, capture_output=True
    )
    if previous.returncode != 0:
        pytest.skip("no previous commit with protos/ (shallow clone): nothing to compare")
    completed = subprocess.run(
        [str(BUF), "breaking", "protos", "--against", ".git#ref=HEAD~1,subdir=protos"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
