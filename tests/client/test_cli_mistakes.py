"""Issue 10, items 11 and 14: `edgefleet stream` and `edgefleet controller` as a new user meets
them: help text, environment variables, one exit-code rule, results that say where they came
from, and a TLS mistake said at once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from testkit.edge import running_server
from testkit.media import EXPECTED_TOP1, jpeg_bytes, photo
from testkit.repositories import ONNX_MODEL, ROOT

# Runs the edgefleet CLI as child processes: system tests.
pytestmark = pytest.mark.system


async def edgefleet(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli", *args, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_14_stream_help_keeps_its_defaults():
    code, stdout, _ = await edgefleet("stream", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "Pin a version (default: the active one)" in text
    assert "raw (default jpeg)" in text
    assert "Pin a version ." not in text


async def test_11_the_client_model_comes_from_the_environment():
    # No --model: EDGEFLEET_CLIENT_MODEL stands in; the bad quality is then the one complaint.
    code, _, stderr = await edgefleet(
        "stream",
        "pattern",
        env={"EDGEFLEET_CLIENT_MODEL": "m", "EDGEFLEET_CLIENT_JPEG_QUALITY": "0"},
    )
    assert code == 2
    assert "--quality / EDGEFLEET_CLIENT_JPEG_QUALITY" in stderr
    assert "--model" not in stderr and "Traceback" not in stderr and "pydantic" not in stderr
    code, _, stderr = await edgefleet("stream", "pattern")
    assert code == 2
    assert "--model / EDGEFLEET_CLIENT_MODEL: Field required" in stderr


async def test_14_a_source_that_cannot_be_opened_is_exit_2_either_way(tmp_path: Path):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    for source in (tmp_path / "missing.mp4", not_a_video):
        code, _, stderr = await edgefleet(
            "stream", str(source), "--model", "m", "--server", "127.0.0.1:1"
        )
        assert code == 2, (source, stderr[-1500:])


async def test_14_results_name_their_file_and_frame_and_skipped_images_are_said(
    repository: Path, tmp_path: Path
):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_chelsea.jpg").write_bytes(jpeg_bytes(photo("chelsea")))
    (folder / "b_broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "c_coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    output = tmp_path / "results.jsonl"
    async with running_server(repository) as server:
        code, stdout, stderr = await edgefleet(
            "stream", str(folder), "--server", f"127.0.0.1:{server.port}", "--model", ONNX_MODEL,
            "--fps", "0", "--output", "jsonl", str(output),
        )  # fmt: skip
    assert code == 0, stderr[-2000:]
    assert "b_broken.jpg: skipped" in stderr
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["file"], r["frame_index"]) for r in results] == [
        ("a_chelsea.jpg", 0),
        ("c_coffee.jpg", 1),
    ]
    assert all(r["stream_id"] for r in results)
    assert results[0]["labels"][0]["label"] in EXPECTED_TOP1["chelsea"]
    # Not a terminal: the summary table is not cut to 80 columns.
    assert max(len(line) for line in stdout.splitlines()) > 80


async def test_14_tls_against_a_plaintext_server_fails_at_once(repository: Path):
    async with running_server(repository) as server:
        code, _, stderr = await edgefleet(
            "stream", "pattern", "--server", f"127.0.0.1:{server.port}", "--model", ONNX_MODEL,
            "--tls", "--duration", "30",
        )  # fmt: skip
    assert code == 1
    assert "TLS handshake failed" in stderr
    assert "stream broke" not in stderr and '"reconnects": 0' in stderr  # no retry at all


async def test_11_controller_settings_come_from_the_environment(tmp_path: Path):
    code, _, stderr = await edgefleet(
        "controller", "--data", str(tmp_path / "fleet"), "--port", "0", "--enroll-port", "0",
        "--metrics-port", "-1", env={"EDGEFLEET_CONTROLLER_TELEMETRY_INTERVAL_S": "-1"},
    )  # fmt: skip
    assert code == 2
    assert "telemetry_interval_s" in stderr and "Traceback" not in stderr


async def test_25_bad_result_options_name_their_flag():
    for flags, said in (
        (("--roi", "100,100,50,200"), "--roi / EDGEFLEET_CLIENT_ROI: Value error"),
        (("--roi", "1,2,3"), "--roi / EDGEFLEET_CLIENT_ROI: Value error, expected 4 numbers"),
        (("--classes", "0,cat"), "--classes / EDGEFLEET_CLIENT_CLASSES"),
        (("--score-threshold", "1.5"), "--score-threshold / EDGEFLEET_CLIENT_SCORE_THRESHOLD"),
        (("--max-detections", "-1"), "--max-detections / EDGEFLEET_CLIENT_MAX_DETECTIONS"),
    ):
        code, _, stderr = await edgefleet("stream", "pattern", "--model", "m", *flags)
        assert code == 2, (flags, stderr[-1500:])
        assert said in " ".join(stderr.split()) and "Traceback" not in stderr, (flags, stderr)
