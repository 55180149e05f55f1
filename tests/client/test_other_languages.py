"""The camera examples in Python, Node, C++, Go and Java, built by `make stubs`' script, each
streaming real JPEG files (and one corrupt frame) to a real token-protected server.

C++ and Node never skip: CI's machine has apt, npm and root, so a toolchain that will not install
is a failure to report. Go and Java skip only where Debian cannot provide their toolchain, with
the reason (`built_clients`). The cross-language comparison is tests/client/test_conformance.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from testkit.camera_examples import BuiltClients
from testkit.edge import running_server
from testkit.media import EXPECTED_TOP1, jpeg_bytes, photo
from testkit.repositories import ONNX_MODEL, ROOT, copy_model

# Builds and runs the camera examples (compilers, Node, buf): system tests.
pytestmark = pytest.mark.system

NODE_DIR = ROOT / "client/examples/node"
BUF = NODE_DIR / "node_modules/.bin/buf"
RESULT_LINE = re.compile(r"^frame (\d+) efficientnet_lite0/1: ([^(]+) \((0\.\d+)\)")
LANGUAGES = ("python", "node", "cpp", "go", "java")


@pytest.fixture
def photo_files(tmp_path: Path) -> list[Path]:
    files = []
    for name in ("chelsea", "coffee"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(jpeg_bytes(photo(name)))
        files.append(path)
    return files


def check_output(output: str, frames: int = 2) -> None:
    results = [RESULT_LINE.match(line) for line in output.splitlines()]
    top1 = {int(m.group(1)): m.group(2).strip() for m in results if m}
    assert set(top1) == {1, 2}, output
    assert top1[1] in EXPECTED_TOP1["chelsea"], output
    assert top1[2] in EXPECTED_TOP1["coffee"], output
    assert f"done: 2/{frames} frames answered" in output


async def run_client(command: list[str], expect_rc: int = 0, **env: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 120)
    output = stdout.decode()
    assert process.returncode == expect_rc, output
    return output


@pytest.mark.parametrize("language", LANGUAGES)
async def test_camera_streams_photos_with_a_token_and_reports_a_corrupt_frame(
    language: str, built_clients: BuiltClients, repository: Path, photo_files: list[Path]
) -> None:
    corrupt = photo_files[0].parent / "corrupt.jpg"
    corrupt.write_bytes(photo_files[0].read_bytes()[:200])
    files = [*map(str, photo_files), str(corrupt)]
    async with running_server(repository, auth_token="camera-secret") as server:
        target = f"127.0.0.1:{server.port}"
        command = [*built_clients.command(language), target, ONNX_MODEL, *files]
        output = await run_client(command, EDGEFLEET_TOKEN="camera-secret")
        refused = await run_client(command, expect_rc=1, EDGEFLEET_TOKEN="wrong")
    check_output(output, frames=3)
    assert re.search(r"^opened stream=\S+ model=efficientnet_lite0 version=1$", output, re.M)
    # The corrupt frame is answered on its own (INVALID_ARGUMENT) and the stream carries on.
    assert re.search(r"^frame 3 error 3: .*JPEG", output, re.M), output
    # Each language names the status its own way (UNAUTHENTICATED, Unauthenticated, code 16).
    unauthenticated = r"stream failed: .*(UNAUTHENTICATED|Unauthenticated|code 16)"
    assert re.search(unauthenticated, refused), refused
    assert "opened" not in refused and "frame" not in refused, refused


def test_go_vendoring_refuses_a_version_debian_does_not_ship(
    built_clients: BuiltClients, tmp_path: Path
) -> None:
    """go.mod pins versions; vendoring something else from Debian must fail, not build."""
    built_clients.command("go")  # skips where Debian's Go packages are not installable
    module = tmp_path / "module"
    module.mkdir()
    pinned = "google.golang.org/grpc v1.33.3"
    go_mod = (ROOT / "client/go/go.mod").read_text()
    assert pinned in go_mod
    (module / "go.mod").write_text(go_mod.replace(pinned, "google.golang.org/grpc v1.60.0"))
    completed = subprocess.run(
        ["bash", str(ROOT / "scripts/go_vendor_debian.sh"), str(module)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert (
        "go.mod wants google.golang.org/grpc v1.60.0, Debian's golang-google-grpc-dev is 1.33.3"
        in completed.stderr
    )
    assert not (module / "vendor").exists()


@pytest.mark.usefixtures("built_clients")
def test_buf_lint_is_clean() -> None:
    completed = subprocess.run(
        [str(BUF), "lint", "protos"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.usefixtures("built_clients")
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


@pytest.mark.usefixtures("built_clients")
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


@pytest.mark.parametrize("language", ("node", "cpp"))
async def test_camera_prints_the_detections_and_text_of_a_pipeline(
    language: str, built_clients: BuiltClients, built_models: Path, tmp_path: Path
) -> None:
    """Boxes and read text reach a Node or C++ integrator without any decoding of their own."""
    repo = tmp_path / "ocr"
    for name in ("ppocr", "ppocr_det", "ppocr_rec"):
        copy_model(built_models, name, repo)
    image = np.full((240, 640, 3), 235, np.uint8)
    cv2.putText(image, "EDGE FLEET 2026", (40, 140), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 3)
    frame = tmp_path / "text.jpg"
    frame.write_bytes(jpeg_bytes(image))
    async with running_server(repo, auth_token="camera-secret") as server:
        command = [
            *built_clients.command(language),
            f"127.0.0.1:{server.port}",
            "ppocr",
            str(frame),
        ]
        output = await run_client(command, EDGEFLEET_TOKEN="camera-secret")
    match = re.search(r"^\s+detection \S+ (0\.\d+) box=(\d+),(\d+),(\d+),(\d+) text=\"([^\"]*)\"",
                      output, re.M)  # fmt: skip
    assert match, output
    assert "EDGE" in match.group(6).upper() and "2026" in match.group(6), output
    x_min, y_min, x_max, y_max = map(int, match.group(2, 3, 4, 5))
    assert x_min < 80 and x_max > 400 and y_min < 140 < y_max, output  # the box lies on the text
