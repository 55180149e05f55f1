"""Events out of the camera client, end to end: `edgefleet stream --config` as a child process
streams a clip where a real face (the astronaut's head, testkit/moving_face.py) enters a zone
and crosses a line, to the real server running the real `faces` pipeline; the events reach a
real mosquitto broker (Debian's, started here) and a real aiohttp webhook receiver that checks
the HMAC signature. With the broker stopped mid-run, frames keep flowing and what overflowed
the sink's queue is counted, and only that is lost.

Child processes, a broker and seconds of MTCNN: system tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from testkit.edge import running_server
from testkit.faces import copy_faces
from testkit.moving_face import LINE_NAME, ZONE_NAME, line_points, write_clip, zone_points
from testkit.processes import EDGEFLEET, Spawned, spawn
from testkit.services import Mosquitto, start_mosquitto
from testkit.webhooks import Receiver

pytestmark = pytest.mark.system

# Generous: a loaded 2-core machine runs MTCNN on every frame.
WAIT_S = 120.0
SECRET = "webhook-secret-for-tests"
EVENT_FIELDS = {
    "id", "event", "camera", "stream_id", "model_name", "model_version", "track_id",
    "class_id", "label", "sequence", "time", "capture_time_unix_ns", "box", "score",
}  # fmt: skip


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    started = start_mosquitto(tmp_path / "mosquitto")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "door.avi")


def config_file(tmp_path: Path, clip: Path, broker: Mosquitto, hook: str, queue: int) -> Path:
    def points(xy: list[tuple[float, float]]) -> str:
        return "[" + ", ".join(f"[{x:g}, {y:g}]" for x, y in xy) + "]"

    path = tmp_path / "cameras.toml"
    path.write_text(
        f"""
model = "faces"

[cameras.door-cam]
source = "{clip}"

[cameras.door-cam.analytics]
min_hits = 2
lost_seconds = 0.5
zones = {{ {ZONE_NAME} = {points(zone_points())} }}
lines = {{ {LINE_NAME} = {points(line_points())} }}

[cameras.door-cam.mqtt]
url = "{broker.url}"
topic = "edgefleet/{{camera}}/events"
queue = {queue}

[cameras.door-cam.webhook]
url = "{hook}"
secret_env = "DOOR_HOOK_SECRET"
"""
    )
    return path


class Subscriber:
    """Everything published on `topic`, kept across broker restarts."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.subscribed = asyncio.Event()
        self._broker, self._topic = broker, topic

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self._broker.port) as client:
                    await client.subscribe(self._topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.messages.append(json.loads(message.payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def kinds(self) -> list[str]:
        return [message["event"] for message in self.messages]


@contextlib.asynccontextmanager
async def subscribed(broker: Mosquitto, topic: str) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber(broker, topic)
    task = asyncio.create_task(subscriber.run())
    try:
        await asyncio.wait_for(subscriber.subscribed.wait(), 30)
        yield subscriber
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(what: str, ready: Callable[[], bool], process: Spawned | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if process is not None and not process.running and not ready():
            raise AssertionError(f"{what}: the CLI exited:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            log = process.log_tail() if process is not None else ""
            raise AssertionError(f"{what}: not within {WAIT_S} s\n{log}")
        await asyncio.sleep(0.1)


def summaries(process: Spawned) -> list[dict[str, Any]]:
    """Not a terminal: the CLI prints one JSON summary per stream on stderr."""
    return [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]


def stream(tmp_path: Path, port: int, config: Path, *flags: str) -> Spawned:
    command = [*EDGEFLEET, "stream", "--config", str(config), "--server", f"127.0.0.1:{port}",
               *flags]  # fmt: skip
    return spawn(command, tmp_path / "stream.log", env={"DOOR_HOOK_SECRET": SECRET})


async def test_events_reach_mosquitto_and_a_signed_webhook(
    tmp_path: Path, built_models: Path, broker: Mosquitto, clip: Path
) -> None:
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    receiver = await Receiver(secret=SECRET.encode()).start()
    config = config_file(tmp_path, clip, broker, receiver.url, queue=100)
    try:
        async with (
            running_server(repo) as server,
            subscribed(broker, "edgefleet/door-cam/events") as subscriber,
        ):
            process = stream(tmp_path, server.port, config)
            try:
                # The clip ends; the CLI delivers what is queued and exits by itself.
                await asyncio.to_thread(process.wait, WAIT_S)
                assert process.returncode == 0, process.log_tail()
                await wait_for("five events on MQTT", lambda: len(subscriber.messages) >= 5)
            finally:
                process.kill()
    finally:
        await receiver.stop()

    expected = ["appear", "zone_enter", "zone_leave", "line_cross", "disappear"]
    assert subscriber.kinds() == expected, subscriber.messages
    for message in subscriber.messages:
        assert message.keys() >= EVENT_FIELDS, message
    track = subscriber.messages[0]["track_id"]
    assert track > 0
    assert {
        (m["camera"], m["stream_id"], m["model_name"], m["model_version"], m["track_id"])
        for m in subscriber.messages
    } == {("door-cam", "door-cam", "faces", "1", track)}
    assert all(m["label"] == "face" and m["class_id"] == 0 for m in subscriber.messages)
    assert all(m["time"].endswith("Z") for m in subscriber.messages)
    assert all(m["capture_time_unix_ns"] > 0 for m in subscriber.messages)
    by_kind = {m["event"]: m for m in subscriber.messages}
    assert by_kind["zone_enter"]["zone"] == by_kind["zone_leave"]["zone"] == ZONE_NAME
    assert (by_kind["line_cross"]["line"], by_kind["line_cross"]["direction"]) == (LINE_NAME, "in")
    # The face's box sits across the line when it crosses it.
    x_min, _, x_max, _ = by_kind["line_cross"]["box"]
    assert x_min < line_points()[0][0] < x_max + 30

    # The webhook got the same documents, every one signed (the receiver answers 401 else).
    assert [event["id"] for event in receiver.events] == [m["id"] for m in subscriber.messages]
    assert all(status == 200 for _, status in receiver.attempts)
    assert all(h["X-Edgefleet-Signature"].startswith("sha256=") for h in receiver.headers)
    (summary,) = summaries(process)
    assert summary["events"] == 5
    assert [(s["delivered"], s["dropped"]) for s in summary["sinks"]] == [(5, 0), (5, 0)]


async def test_a_broker_stopped_mid_run_costs_only_what_overflowed(
    tmp_path: Path, built_models: Path, broker: Mosquitto, clip: Path
) -> None:
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    receiver = await Receiver(secret=SECRET.encode()).start()
    # Room for 2 events: the clip, looped, makes 5 a pass while the broker is down.
    config = config_file(tmp_path, clip, broker, receiver.url, queue=2)
    output = tmp_path / "results.jsonl"

    def results() -> int:
        text = output.read_text() if output.exists() else ""
        return text.count('"event": "result"')

    try:
        async with running_server(repo) as server:
            async with subscribed(broker, "edgefleet/door-cam/events") as subscriber:
                process = stream(
                    tmp_path, server.port, config, "--loop", "--output", "jsonl", str(output)
                )
                await wait_for("a first event", lambda: bool(subscriber.messages), process)
            broker.stop()
            stopped_at = results()
            hooks_before = len(receiver.events)
            # Two passes of the clip (5 events each) while the broker is down: frames flow.
            await wait_for(
                "two webhook passes with the broker down",
                lambda: len(receiver.events) >= hooks_before + 10,
                process,
            )
            assert results() > stopped_at + 2 * 40
            await asyncio.to_thread(broker.start_again)
            async with subscribed(broker, "edgefleet/door-cam/events") as subscriber:
                await wait_for("events again", lambda: bool(subscriber.messages), process)
            process.signal(signal.SIGINT)
            await asyncio.to_thread(process.wait, WAIT_S)
            process.kill()
    finally:
        await receiver.stop()

    # The JSONL output has the same documents, ids included.
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    written = [d["id"] for line in lines if line["event"] == "analytics" for d in line["events"]]
    assert len(written) == len(receiver.events) and written[:5] == [
        event["id"] for event in receiver.events[:5]
    ]
    (summary,) = summaries(process)
    mqtt, webhook = summary["sinks"]
    assert mqtt["sink"].startswith("mqtt://127.0.0.1:") and mqtt["retries"] >= 1
    # Every event was delivered or counted as dropped; the outage cost only the overflow.
    assert mqtt["dropped"] >= 8, mqtt
    assert mqtt["delivered"] + mqtt["dropped"] == summary["events"], summary
    assert webhook["dropped"] == 0 and webhook["delivered"] == summary["events"], summary
