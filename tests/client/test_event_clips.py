"""Event clips, end to end: `edgefleet stream --config` as a child process streams a clip where
a real face (testkit/moving_face.py) enters a zone and crosses a line, to the real server with
the real `faces` pipeline and analytics on; each camera records a clip per group of its events.

What each clip must hold is worked out from the run's own JSONL output (the events' and the
answered frames' capture times, which are the video's timeline for a file source), never from
wall time, so a loaded machine changes nothing. Plus the ring's memory bound, in process.

Child processes and seconds of MTCNN: system tests."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from client.clips import ClipRecorder
from client.events import AnalyticsEvent, ClipSettings, EventKind
from testkit.edge import running_server
from testkit.faces import copy_faces
from testkit.moving_face import FPS, LINE_NAME, ZONE_NAME, line_points, write_clip, zone_points
from testkit.processes import EDGEFLEET, spawn

WAIT_S = 240.0
NS = 1_000_000_000


def points(xy: list[tuple[float, float]]) -> str:
    return "[" + ", ".join(f"[{x:g}, {y:g}]" for x, y in xy) + "]"


ANALYTICS = f"""min_hits = 2
lost_seconds = 0.5
zones = {{ {ZONE_NAME} = {points(zone_points())} }}
lines = {{ {LINE_NAME} = {points(line_points())} }}
"""


def config_file(tmp_path: Path, sources: dict[str, Path], clips: Path) -> Path:
    path = tmp_path / "cameras.toml"
    path.write_text(
        f"""
model = "faces"

# Before and after from the command's flags (0.4 s): zone_enter (~1.0 s) and line_cross
# (~2.1 s) are two clips.
[cameras.split]
source = "{sources["split"]}"
clips_dir = "{clips}"
clip_events = ["zone_enter", "line_cross"]

[cameras.split.analytics]
{ANALYTICS}

# Its own 0.5 s: zone_leave (~1.8 s) and line_cross (~2.1 s) overlap, one clip.
[cameras.merged]
source = "{sources["merged"]}"
clips_dir = "{clips}"
clip_before_s = 0.5
clip_after_s = 0.5
clip_events = ["zone_leave", "line_cross"]

[cameras.merged.analytics]
{ANALYTICS}

# No analytics: no events, no clip.
[cameras.quiet]
source = "{sources["quiet"]}"
clips_dir = "{clips}"
"""
    )
    return path


def expected_groups(
    events: list[dict[str, Any]], kinds: set[str], before_s: float, after_s: float
) -> list[tuple[dict[str, Any], int, int]]:
    """(first event, window start, window end) per clip, by the documented rule: an event
    within the open clip's window extends it."""
    groups: list[tuple[dict[str, Any], int, int]] = []
    for event in sorted(events, key=lambda e: e["capture_time_unix_ns"]):
        if event["event"] not in kinds:
            continue
        at = event["capture_time_unix_ns"]
        if groups and at <= groups[-1][2]:
            first, start, _ = groups[-1]
            groups[-1] = (first, start, at + round(after_s * NS))
        else:
            groups.append((event, at - round(before_s * NS), at + round(after_s * NS)))
    return groups


def frames_in(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"OpenCV cannot open {path}"
    count = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        assert image.shape == (480, 640, 3)
        count += 1
    capture.release()
    return count


@pytest.mark.system
async def test_a_clip_per_event_group_covers_before_and_after(
    tmp_path: Path, built_models: Path
) -> None:
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    first = write_clip(tmp_path / "split.avi")
    sources = {"split": first}
    for name in ("merged", "quiet"):
        sources[name] = Path(shutil.copy(first, tmp_path / f"{name}.avi"))
    clips = tmp_path / "clips"
    config = config_file(tmp_path, sources, clips)
    output = tmp_path / "results.jsonl"

    async with running_server(repo) as server:
        command = [
            *EDGEFLEET, "stream", "--config", str(config),
            "--server", f"127.0.0.1:{server.port}", "--output", "jsonl", str(output),
            "--clip-before-s", "0.4", "--clip-after-s", "0.4",
        ]  # fmt: skip
        process = spawn(command, tmp_path / "stream.log")
        try:
            await asyncio.to_thread(process.wait, WAIT_S)
        finally:
            process.kill()
        assert process.returncode == 0, process.log_tail()
        summaries = [
            json.loads(line) for line in process.log().splitlines() if line.startswith("{")
        ]
        by_source = {summary["source"]: summary for summary in summaries}
        for name, source in sources.items():
            summary_clips = by_source[str(source)]["clips"]
            assert summary_clips["frames_dropped"] == 0, summary_clips
            assert summary_clips["frames_evicted_early"] == 0, summary_clips
            written = sorted(Path(f).name for f in summary_clips["files"])
            assert summary_clips["written"] == len(written)
            assert written == sorted(p.name for p in clips.glob(f"{name}-*")), name

    lines = [json.loads(line) for line in output.read_text().splitlines()]
    plans = {
        "split": ({"zone_enter", "line_cross"}, 0.4, 0.4, 2),
        "merged": ({"zone_leave", "line_cross"}, 0.5, 0.5, 1),
    }
    for name, (kinds, before_s, after_s, clip_count) in plans.items():
        stream = str(sources[name])
        events = [e for line in lines if line["stream"] == stream and line["event"] == "analytics"
                  for e in line["events"]]  # fmt: skip
        captures = sorted(
            line["capture_time_unix_ns"]
            for line in lines
            if line["stream"] == stream and line["event"] == "result"
        )
        groups = expected_groups(events, kinds, before_s, after_s)
        assert len(groups) == clip_count, (name, events)
        files = sorted(clips.glob(f"{name}-*.avi"))
        assert len(files) == clip_count, files
        for path, (event, start, end) in zip(files, groups, strict=True):
            assert path.name.endswith(f"-{event['event']}.avi"), path.name
            expected = [t for t in captures if start <= t <= end]
            # The window is the video's own time: before..after of the event is in it (or the
            # clip ran to the video's end).
            span_s = (expected[-1] - expected[0]) / NS
            assert span_s >= min(end - start, captures[-1] - start) / NS - 2 / FPS, span_s
            # One frame of slack for a capture time exactly on the window's edge.
            assert abs(frames_in(path) - len(expected)) <= 1, (path.name, len(expected))
    assert not list(clips.glob("quiet-*")), "a camera without events wrote a clip"


def event_at(capture_ns: int) -> AnalyticsEvent:
    return AnalyticsEvent(
        EventKind.LINE_CROSS, "s", "faces", "1", 1, 0, "face", 0, capture_ns, (0, 0, 9, 9), 0.9
    )


def test_the_ring_stays_within_its_byte_budget_whatever_the_frame_size(tmp_path: Path) -> None:
    frame = np.zeros((1080, 1920, 3), np.uint8)  # ~6 MB
    budget = 5 * frame.nbytes
    recorder = ClipRecorder("big", ClipSettings(tmp_path, 2.0, 0.5, max_bytes=budget), 10.0)
    try:
        for index in range(40):
            recorder.frame(index * NS // 10, frame, ())
            # 2 s at 10 fps would be 20 frames: the budget keeps at most 5.
            assert recorder._ring_bytes + recorder._pending() <= budget
        recorder.event(event_at(39 * NS // 10))
        for index in range(40, 50):
            recorder.frame(index * NS // 10, frame, ())
    finally:
        recorder.close()
    assert recorder.stats.frames_evicted_early >= 20
    assert recorder.stats.written == 1
    written = recorder.stats.frames_written
    # Every frame of the window was written or counted as dropped.
    assert written >= 1 and written + recorder.stats.frames_dropped >= 6
    assert frames_in_any(Path(recorder.stats.files[0])) == written


def frames_in_any(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_a_folder_that_cannot_be_written_costs_clips_not_the_stream(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    recorder = ClipRecorder("cam", ClipSettings(folder, 0.5, 0.5), 10.0)
    folder.rmdir()  # gone after start (an unmounted card): OpenCV cannot open the file
    frame = np.zeros((48, 64, 3), np.uint8)
    for index in range(30):
        recorder.frame(index * NS // 10, frame, ())
        if index == 10:
            recorder.event(event_at(index * NS // 10))
    recorder.close()
    # Frames 0.5..1.5 s: none written, each counted, the first error kept for the summary.
    assert (recorder.stats.written, recorder.stats.frames_written) == (0, 0)
    assert recorder.stats.frames_dropped == 11
    assert recorder.stats.error is not None and "cannot write video" in recorder.stats.error
