"""Cameras that never give up, through the real `edgefleet stream` CLI as a child process:
a real RTSP camera (GStreamer's RTSP server) killed and restarted mid-run, or down at start;
`--save-video` with a model slower than the camera; the result options reaching the server."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import pytest

from client.frames import CapturedFrame
from client.security import ChannelSecurity, open_channel
from client.sources import until_stopped
from client.sources.pattern import TestPatternSource
from client.stream import (
    FrameResult,
    FramesDropped,
    FrameStreamClient,
    OverloadPolicy,
    StreamConfig,
)
from edgefleet.face_frames import frame_with_faces
from testkit.edge import running_server
from testkit.faces import copy_faces
from testkit.media import png_bytes
from testkit.processes import EDGEFLEET, Spawned, spawn
from testkit.repositories import ONNX_MODEL
from testkit.services import RtspCamera, rtsp_camera

# Generous: a loaded 2-core machine, an RTSP connect that takes seconds, backoff up to 10 s.
WAIT_S = 90.0


async def wait_for(what: str, ready: Callable[[], bool], process: Spawned) -> None:
    """Poll `ready` from the event loop (the in-process server keeps serving meanwhile)."""
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if not process.running:
            exited = f"the CLI exited {process.returncode}"
            raise AssertionError(f"{what}: {exited}:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S} s:\n{process.log_tail()}")
        await asyncio.sleep(0.1)


def records(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines written so far."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines]


def summaries(process: Spawned) -> list[dict[str, Any]]:
    """Not a terminal: the CLI prints one JSON summary per stream on stderr."""
    return [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]


@asynccontextmanager
async def streaming(
    tmp_path: Path, port: int, model: str, *sources_and_flags: str
) -> AsyncIterator[tuple[Spawned, Path]]:
    """`edgefleet stream ...` writing JSONL; ended with Ctrl-C (SIGINT) and awaited."""
    output = tmp_path / "results.jsonl"
    command = [*EDGEFLEET, "stream", *sources_and_flags, "--server", f"127.0.0.1:{port}",
               "--model", model, "--output", "jsonl", str(output)]  # fmt: skip
    process = spawn(command, tmp_path / "stream.log")
    try:
        yield process, output
    finally:
        # The first Ctrl-C ends the sources; frames already sent are still answered.
        process.signal(signal.SIGINT)
        await asyncio.to_thread(process.wait, WAIT_S)
        process.kill()


def results_after(path: Path, unix_ns: int) -> int:
    return sum(
        1
        for record in records(path)
        if record["event"] == "result" and record["capture_time_unix_ns"] > unix_ns
    )


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[RtspCamera]:
    """An RTSP camera on its own port, not started yet; killed at the end."""
    made = rtsp_camera(tmp_path / "camera", started=False)
    yield made
    made.kill()


# A child CLI, an RTSP server killed and restarted: tens of seconds.
@pytest.mark.system
async def test_rtsp_camera_killed_mid_run_comes_back_on_the_same_stream(
    repository: Path, camera: RtspCamera, tmp_path: Path
) -> None:
    await asyncio.to_thread(camera.start)
    async with (
        running_server(repository) as server,
        streaming(tmp_path, server.port, ONNX_MODEL, camera.url) as (process, output),
    ):
        await wait_for("results from the camera", lambda: len(records(output)) > 0, process)
        camera.kill()
        await wait_for("the drop noticed", lambda: "camera dropped" in process.log(), process)
        await asyncio.sleep(1.0)
        restarted_ns = time.time_ns()
        await asyncio.to_thread(camera.start)
        await wait_for("the camera back", lambda: "back after" in process.log(), process)
        await wait_for(
            "results from the restarted camera",
            lambda: results_after(output, restarted_ns) >= 5,
            process,
        )
    assert process.returncode == 0, process.log_tail()
    results = [record for record in records(output) if record["event"] == "result"]
    # One server stream throughout: the camera's drop never ended or reopened it.
    assert {record["stream_id"] for record in results} == {results[0]["stream_id"]}
    (summary,) = summaries(process)
    assert summary["camera_reconnects"] == 1 and summary["reconnects"] == 0, summary
    assert summary["frames_answered"] == len(results) and summary["error"] is None
    assert "reconn srv/cam" in process.log()


@pytest.mark.system
async def test_rtsp_camera_down_at_start_is_retried_until_it_comes_up(
    repository: Path, camera: RtspCamera, tmp_path: Path
) -> None:
    async with (
        running_server(repository) as server,
        streaming(tmp_path, server.port, ONNX_MODEL, camera.url) as (process, output),
    ):
        await wait_for("the refusal said", lambda: "retrying until" in process.log(), process)
        # Down for a while: the run goes on (the CLI does not exit 2 as for a missing file).
        await asyncio.sleep(2.0)
        assert process.running, process.log_tail()
        await asyncio.to_thread(camera.start)
        await wait_for("results", lambda: len(records(output)) >= 1, process)
    assert process.returncode == 0, process.log_tail()
    (summary,) = summaries(process)
    assert summary["camera_reconnects"] == 1 and summary["frames_answered"] > 0, summary


@pytest.mark.system
async def test_a_camera_that_never_comes_up_gives_up_after_camera_retry_for(
    repository: Path, camera: RtspCamera, tmp_path: Path
) -> None:
    """Never started: with --camera-retry-for the CLI gives it up and exits 1 on its own,
    saying why; without a bound it would be retried for as long as the run goes on."""
    async with (
        running_server(repository) as server,
        streaming(tmp_path, server.port, ONNX_MODEL, camera.url,
                  "--camera-retry-for", "2") as (process, _),
    ):  # fmt: skip
        await asyncio.to_thread(process.wait, WAIT_S)
    assert process.returncode == 1, process.log_tail()
    assert "gave up: down for" in process.log() and "failed:" in process.log(), process.log_tail()
    (summary,) = summaries(process)
    assert summary["frames_answered"] == 0 and "gave up" in summary["error"], summary


@pytest.mark.system
async def test_a_run_where_one_camera_never_came_up_fails_and_the_others_ran(
    repository: Path, camera: RtspCamera, tmp_path: Path
) -> None:
    """Two cameras, one never reachable, no retry bound: the working one streams the whole run;
    when the run ends, the one that never gave a frame makes it exit 1, naming it."""
    async with (
        running_server(repository) as server,
        streaming(tmp_path, server.port, ONNX_MODEL, "pattern:160x120@10", camera.url,
                  "--duration", "4") as (process, output),
    ):  # fmt: skip
        await asyncio.to_thread(process.wait, WAIT_S)
    assert process.returncode == 1, process.log_tail()
    by_source = {summary["source"]: summary for summary in summaries(process)}
    assert by_source["pattern:160x120@10"]["error"] is None
    assert by_source["pattern:160x120@10"]["frames_answered"] > 0
    never = by_source[camera.url]
    assert never["frames_answered"] == 0 and "never came up" in never["error"], never
    assert f"{camera.url} failed:" in process.log(), process.log_tail()
    assert any(record["event"] == "result" for record in records(output))


# The faces pipeline (tens of milliseconds a frame here) against a pattern read flat out.
@pytest.mark.system
async def test_save_video_writes_every_answered_frame_of_a_slow_model(
    built_models: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    video = tmp_path / "answered.avi"
    async with (
        running_server(repo) as server,
        streaming(tmp_path, server.port, "faces", "pattern:320x240", "--fps", "0",
                  "--duration", "6", "--save-video", str(video), "--credits") as (process, output),
    ):  # fmt: skip
        await asyncio.to_thread(process.wait, WAIT_S)
    assert process.returncode == 0, process.log_tail()
    answered = [record for record in records(output) if record["event"] == "result"]
    (summary,) = summaries(process)
    # The model is slower than the camera: most frames read were never answered.
    read = (
        summary["frames_sent"]
        + summary["frames_dropped_client"]
        + summary["frames_skipped_source"]  # discarded unencoded: no flow credit held
    )
    assert read > 2 * len(answered) > 0, summary
    # Flow credits: the camera sends only what the server will run, none to be replaced.
    assert summary["frames_dropped"] == 0, summary
    capture = cv2.VideoCapture(str(video))
    written = 0
    while capture.read()[0]:
        written += 1
    capture.release()
    assert written == len(answered)


@pytest.mark.system
async def test_result_options_from_the_command_line_reach_the_server(
    built_models: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    scene = frame_with_faces(640, 480, 5)
    picture = tmp_path / "five-faces.png"
    picture.write_bytes(png_bytes(scene.image))
    first_head = scene.heads[0]
    roi = ",".join(str(value) for value in first_head)

    async def detections(run: str, *flags: str) -> list[dict[str, Any]]:
        workdir = tmp_path / run
        workdir.mkdir()
        async with streaming(workdir, server.port, "faces", str(picture), *flags) as (process, _):
            await asyncio.to_thread(process.wait, WAIT_S)
        assert process.returncode == 0, process.log_tail()
        (result,) = [r for r in records(workdir / "results.jsonl") if r["event"] == "result"]
        found: list[dict[str, Any]] = result["detections"]
        return found

    async with running_server(repo) as server:
        every = await detections("every")
        best = await detections("best", "--max-detections", "1")
        inside = await detections("roi", "--roi", roi)
        none = await detections("classes", "--classes", "7")
        strict = await detections("threshold", "--score-threshold", "0.999999")
    assert len(every) >= 3, every
    assert len(best) == 1
    assert best[0]["score"] == max(item["score"] for item in every)
    assert len(inside) >= 1
    for item in inside:
        x_min, y_min, x_max, y_max = item["box"]
        # Boxes stay in full-frame pixels and lie within the region (a little slack).
        assert x_min >= first_head[0] - 2 and x_max <= first_head[2] + 2, (item, first_head)
        assert y_min >= first_head[1] - 2 and y_max <= first_head[3] + 2, (item, first_head)
    assert none == []
    assert len(strict) < len(every)


async def test_kept_frames_are_the_ones_in_flight_and_come_back_with_their_results(
    repository: Path,
) -> None:
    """keep_frames holds a frame only while it is in flight: a pattern read flat out makes far
    more frames than the model answers, yet the frames alive stay within the client's window
    and send queue, and each result carries the very frame it answers."""
    # Weak references: a frame counts as alive only while something still holds it.
    alive: list[weakref.ref[CapturedFrame]] = []
    made = 0

    async def tracked() -> AsyncIterator[CapturedFrame]:
        nonlocal made
        async for frame in TestPatternSource(160, 120).frames():
            made += 1
            alive.append(weakref.ref(frame))
            yield frame

    config = StreamConfig(
        model_name=ONNX_MODEL, overload_policy=OverloadPolicy.DROP_OLDEST, max_in_flight=2,
        keep_frames=True,
    )  # fmt: skip
    most_alive, answered, dropped = 0, 0, 0
    async with (
        running_server(repository) as server,
        open_channel(f"127.0.0.1:{server.port}", ChannelSecurity()) as channel,
    ):
        stop = asyncio.Event()
        client = FrameStreamClient(channel, config)
        async for event in client.stream(until_stopped(tracked(), stop)):
            alive[:] = [ref for ref in alive if ref() is not None]
            most_alive = max(most_alive, len(alive))
            if isinstance(event, FrameResult):
                answered += 1
                assert event.frame is not None
                assert event.frame.capture_time_unix_ns == event.capture_time_unix_ns
                if answered == 40:
                    stop.set()
            elif isinstance(event, FramesDropped):
                dropped += len(event.sequences)
    stats = client.stats.snapshot()
    assert made > answered + stats.frames_dropped_client // 2 >= 40
    # Window (2 x max_in_flight 2) + send queue (8) + the frames the source, the pacing and
    # the encoder hold + the answered one in hand. Measured here: at most 12 of 2,193 made.
    bound = 2 * 2 + config.send_queue_frames + 4
    assert most_alive <= bound, (most_alive, made, answered, dropped)
