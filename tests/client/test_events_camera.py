"""Camera down/up events from the client's own reconnect logic: a real RTSP camera (GStreamer's
RTSP server) down when `edgefleet stream --config` starts, brought up, killed mid-run and
brought back; a real webhook receiver gets `camera_down` and `camera_up` each time, signed.

A child CLI, an RTSP server started and killed: a system test of tens of seconds."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.edge import running_server
from testkit.processes import EDGEFLEET, Spawned, spawn
from testkit.repositories import ONNX_MODEL
from testkit.services import RtspCamera, rtsp_camera
from testkit.webhooks import Receiver

pytestmark = pytest.mark.system

# Generous: a loaded 2-core machine, an RTSP connect that takes seconds, backoff up to 10 s.
WAIT_S = 90.0


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[RtspCamera]:
    made = rtsp_camera(tmp_path / "camera", started=False)
    yield made
    made.kill()


async def wait_for(what: str, ready: Callable[[], bool], process: Spawned) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if not process.running:
            raise AssertionError(f"{what}: the CLI exited:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S} s:\n{process.log_tail()}")
        await asyncio.sleep(0.1)


async def test_a_camera_that_drops_sends_camera_down_and_up(
    repository: Path, camera: RtspCamera, tmp_path: Path
) -> None:
    receiver = await Receiver(secret=b"camera-secret").start()
    config = tmp_path / "cameras.toml"
    config.write_text(
        f"""
[cameras.gate]
source = "{camera.url}"
model = "{ONNX_MODEL}"
webhook = {{ url = "{receiver.url}", secret_env = "GATE_SECRET" }}
"""
    )
    try:
        async with running_server(repository) as server:
            process = spawn(
                [*EDGEFLEET, "stream", "--config", str(config), "--server",
                 f"127.0.0.1:{server.port}"],
                tmp_path / "stream.log",
                env={"GATE_SECRET": "camera-secret"},
            )  # fmt: skip
            try:
                await wait_for("camera_down at start", lambda: bool(receiver.events), process)
                await asyncio.to_thread(camera.start)
                await wait_for("camera_up", lambda: len(receiver.events) >= 2, process)
                camera.kill()
                await wait_for("camera_down mid-run", lambda: len(receiver.events) >= 3, process)
                await asyncio.to_thread(camera.start)
                await wait_for("camera_up again", lambda: len(receiver.events) >= 4, process)
            finally:
                process.signal(signal.SIGINT)
                await asyncio.to_thread(process.wait, WAIT_S)
                process.kill()
    finally:
        await receiver.stop()

    assert receiver.names() == ["camera_down", "camera_up", "camera_down", "camera_up"]
    assert all(status == 200 for _, status in receiver.attempts)  # every one signed right
    assert {event["camera"] for event in receiver.events} == {"gate"}
    down = receiver.events[0]
    assert down["reason"] and down["time"].endswith("Z") and down["time_unix_ns"] > 0
