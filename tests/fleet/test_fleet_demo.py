"""`make fleet-demo` (issue 11, item 12): it waits until the rollout has ended and the devices
run what the controller wants, and its exit status says whether the rollout succeeded. The demo
as a real process: a controller, three edge servers with agents, EfficientNet-Lite0 traffic."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

# The fleet demo as a child process (a controller and three edge servers): system tests.
pytestmark = pytest.mark.system


async def _demo(built_models: Path, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.fleet_demo", "--repository", str(built_models), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


# Beside a CPU hog: an identical model must succeed on a loaded machine; the last wave is judged
# against a control cohort measured at the same time, not against history.
@pytest.mark.usefixtures("cpu_hog")
async def test_the_demo_succeeds_and_says_so(built_models):
    code, out = await _demo(built_models)
    assert code == 0, out[-4000:]
    assert "rollout SUCCEEDED: every device serves version 2" in out, out[-4000:]
    assert "active versions on the edge servers: ['2']" in out


async def test_a_rolled_back_demo_exits_non_zero_once_the_devices_are_back(built_models):
    code, out = await _demo(built_models, "--broken", "--bake", "2")
    assert code == 1, out[-4000:]
    assert "rollout ROLLED_BACK" in out and "failed to install" in out, out[-4000:]
    # It waited for the rollback to reach every device before saying so.
    assert "active versions on the edge servers: ['1']" in out, out[-4000:]
