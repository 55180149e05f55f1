"""The conformance scenario (client/conformance/scenario.json): the Python, Node, C++, Go and Java
cameras each run every case against the same real server, and must print the same lines.

Python's lines are also checked against the scenario's expectations, so "all the same" cannot
mean "all equally wrong". A language whose toolchain Debian cannot provide is skipped with the
reason; the others are still compared.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from testkit.camera_examples import BuiltClients
from testkit.edge import running_server
from testkit.media import jpeg_bytes, photo
from testkit.repositories import ROOT

# Builds and runs the camera examples (compilers, Node): a system test.
pytestmark = pytest.mark.system

SCENARIO: dict[str, Any] = json.loads((ROOT / "client/conformance/scenario.json").read_text())
LANGUAGES = ("python", "node", "cpp", "go", "java")


@pytest.fixture
def frame_files(tmp_path: Path) -> dict[str, Path]:
    chelsea = jpeg_bytes(photo("chelsea"), quality=90)
    contents = {
        "chelsea": chelsea,
        "coffee": jpeg_bytes(photo("coffee"), quality=90),
        "corrupt": chelsea[:200],
    }
    assert set(contents) == set(SCENARIO["frames"])
    files = {}
    for name, data in contents.items():
        files[name] = tmp_path / f"{name}.jpg"
        files[name].write_bytes(data)
    return files


async def run_camera(command: list[str], token: str | None) -> list[str]:
    """The camera's JSON lines, answers in sequence order and the final status last (a server
    may answer a corrupt frame before the photos queued ahead of it)."""
    env = {key: value for key, value in os.environ.items() if key != "EDGEFLEET_TOKEN"}
    if token is not None:
        env["EDGEFLEET_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    lines = stdout.decode().splitlines()
    assert lines, f"{command[0]} printed nothing: {stderr.decode()}"
    status = json.loads(lines[-1])["status"]
    assert process.returncode == (0 if status == 0 else 1), stdout.decode() + stderr.decode()

    def order(line: str) -> tuple[int, int]:
        message = json.loads(line)  # also proves every line is JSON
        return ("status" in message, message.get("sequence", 0))

    return sorted(lines, key=order)


def check_against_expectations(case: dict[str, Any], lines: list[str]) -> None:
    messages = [json.loads(line) for line in lines]
    expect = case["expect"]
    assert messages[-1] == {"status": expect["status"]}, lines
    assert ({"opened": case["model"]} in messages) is expect["opened"], lines
    answers = [m for m in messages if "sequence" in m]
    results = [m for m in answers if m["code"] == 0]
    errors = {str(m["sequence"]): m["code"] for m in answers if m["code"] != 0}
    assert len(results) == expect["results"] and errors == expect["frame_errors"], lines
    for result in results:
        photo_name = case["frames"][result["sequence"] - 1]
        assert result["class_id"] in SCENARIO["top1_classes"][photo_name], (photo_name, lines)


@pytest.mark.parametrize("case", SCENARIO["cases"], ids=lambda case: case["name"])
async def test_every_client_prints_the_same_lines(
    case: dict[str, Any],
    built_clients: BuiltClients,
    repository: Path,
    frame_files: dict[str, Path],
) -> None:
    languages = [language for language in LANGUAGES if language not in built_clients.skipped]
    files = [str(frame_files[name]) for name in case["frames"]]
    async with running_server(repository, auth_token=case["server_token"]) as server:
        target = f"127.0.0.1:{server.port}"
        # One client at a time: each answer must not depend on the others' traffic.
        outputs = {}
        for language in languages:
            command = [*built_clients.commands[language], "--json", target, case["model"], *files]
            outputs[language] = await run_camera(command, case["token"])
    check_against_expectations(case, outputs["python"])
    for language in languages:
        assert outputs[language] == outputs["python"], (language, outputs)
    missing = sorted(set(LANGUAGES) - set(languages))
    if missing:
        reasons = ", ".join(
            f"{language}: {built_clients.skipped[language]}" for language in missing
        )
        pytest.skip(f"compared {', '.join(languages)}; not built here: {reasons}")
