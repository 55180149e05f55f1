"""Issue 10, mistakes a new user makes with `edgefleet serve`: one clear line and a distinct exit
code (edgefleet/errors.py), never a traceback; EDGEFLEET_* variables for every flag not given."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from testkit.edge import serve_command
from testkit.processes import spawn
from testkit.repositories import ONNX_MODEL, ROOT

# edgefleet serve as child processes: system tests.
pytestmark = pytest.mark.system


async def run_serve(*args: str, env: dict[str, str] | None = None):
    process = await asyncio.create_subprocess_exec(
        *serve_command(*args), cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, stdout.decode(), stderr.decode()


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("edgefleet:")]
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


async def test_9_missing_repository_exits_2_with_one_line(tmp_path):
    code, _, stderr = await run_serve(
        "--repository", str(tmp_path / "typo"), "--port", "0", "--metrics-port", "-1",
        "--http-port", "-1",
    )  # fmt: skip
    assert code == 2
    assert "typo does not exist" in one_line_error(stderr)


async def test_10_a_bad_sandbox_variable_is_one_line_before_loading_models(repository):
    """EDGEFLEET_SANDBOX_* have no flags: read once with the server's settings, a bad one is
    named as its variable, exit 2, before any model loads (it was read by each model load)."""
    code, _, stderr = await run_serve(
        "--repository", str(repository), "--port", "0", "--metrics-port", "-1",
        "--http-port", "-1", "--planner", "manifest", "--log-level", "INFO",
        env={"EDGEFLEET_SANDBOX_RUN_TIMEOUT_S": "-1"},
    )  # fmt: skip
    assert code == 2
    assert one_line_error(stderr) == (
        "edgefleet: EDGEFLEET_SANDBOX_RUN_TIMEOUT_S '-1': Input should be greater than 0"
    )
    assert "loaded" not in stderr


async def test_10_busy_port_exits_3_before_loading_models(repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, stderr = await run_serve(
            "--repository", str(repository), "--port", str(port), "--metrics-port", "-1",
        "--http-port", "-1",
            "--planner", "manifest", "--log-level", "INFO",
        )  # fmt: skip
    assert code == 3
    assert f"127.0.0.1:{port}" in one_line_error(stderr)
    assert "loaded" not in stderr  # refused before any model was loaded


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("--model", "nope"), 4, "model nope"),
        (("--log-level", "LOUD"), 2, "--log-level / EDGEFLEET_LOG_LEVEL 'LOUD'"),
        (("--port", "70000"), 2, "--port / EDGEFLEET_PORT"),
        (("--planner", "magic"), 2, "--planner must be hardware or manifest"),
        # The manifest planner honours the pins it can and refuses the rest, never drops them.
        (("--precision", "int8"), 2, "--precision int8 needs --planner hardware"),
        (("--policy", "latency"), 2, "--policy is a hardware planner setting"),
    ],
)
async def test_10_mistakes_are_one_line_and_a_distinct_code(repository, args, code, fragment):
    returncode, _, stderr = await run_serve(
        "--repository", str(repository), "--port", "0", "--metrics-port", "-1",
        "--http-port", "-1",
        "--planner", "manifest", *args,
    )  # fmt: skip
    assert returncode == code, stderr[-2000:]
    assert fragment in one_line_error(stderr)


async def test_11_environment_sets_every_flag_not_given(repository, tmp_path: Path):
    port_file = tmp_path / "port"
    env = {
        "EDGEFLEET_REPOSITORY": str(repository),
        "EDGEFLEET_PORT": "0",
        "EDGEFLEET_METRICS_PORT": "-1",
        "EDGEFLEET_HTTP_PORT": "-1",
        "EDGEFLEET_PORT_FILE": str(port_file),
        # A flag given wins over its variable: this bad value is never used.
        "EDGEFLEET_LOG_LEVEL": "LOUD",
    }
    process = spawn(
        serve_command("--planner", "manifest", "--log-level", "INFO"), tmp_path / "serve.log",
        env={**os.environ, **env}, stdout_to_log=False,
    )  # fmt: skip

    def written() -> bool:
        return port_file.is_file() and port_file.read_text().strip() != ""

    try:
        await asyncio.to_thread(process.wait_until, written, 120, "the port file", 0.1)
        assert port_file.is_file(), "EDGEFLEET_PORT_FILE was ignored"
        assert int(port_file.read_text()) not in (0, 8001)  # EDGEFLEET_PORT=0 picked a port
    finally:
        returncode = await asyncio.to_thread(process.stop, 60)
    stderr = process.log()
    assert returncode == 0, stderr[-2000:]
    assert f"model(s) loaded: {ONNX_MODEL}/1" in stderr


async def test_9_skipped_entries_and_zero_models_are_said_at_startup(tmp_path):
    repo = tmp_path / "repo"
    (repo / "resnet" / "1").mkdir(parents=True)
    (repo / "resnet" / "1" / "resnet50.onnx").write_bytes(b"onnx")
    (repo / "notes.txt").write_text("hello")
    port_file = tmp_path / "port"
    process = spawn(
        serve_command(
            "--repository", str(repo), "--port", "0", "--metrics-port", "-1", "--http-port", "-1",
            "--planner", "manifest", "--port-file", str(port_file),
        ),
        tmp_path / "serve.log", stdout_to_log=False,
    )  # fmt: skip

    def started_or_exited() -> bool:
        return port_file.is_file() or not process.running

    try:
        await asyncio.to_thread(process.wait_until, started_or_exited, 60, "the port file", 0.1)
    finally:
        await asyncio.to_thread(process.stop, 60)
    stderr = process.log()
    assert (
        "repository entry resnet skipped: version directories ['1'] have no manifest.json "
        "or model.onnx" in stderr
    )
    assert "repository entry notes.txt skipped: a file, not a model directory" in stderr
    assert "no models loaded" in stderr
