"""A real video file, made here with OpenCV from skimage photos, streamed to a real server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from client.security import ChannelSecurity, open_channel
from client.sources import open_source
from client.stream import FrameResult, FrameStreamClient, OverloadPolicy, StreamConfig
from testkit.edge import running_server
from testkit.media import EXPECTED_TOP1, VIDEO_FPS, VIDEO_FRAMES, VIDEO_SCENES, photo, png_bytes
from testkit.repositories import ONNX_MODEL, ROOT


def expected_scene(sequence: int) -> str:
    """The photo shown by 1-based frame `sequence` of the test video."""
    first = 1
    for name, frames in VIDEO_SCENES:
        if sequence < first + frames:
            return name
        first += frames
    raise AssertionError(f"frame {sequence} is past the end of the video")


async def test_video_file_streams_every_frame_with_the_right_labels(
    repository: Path, test_video: Path
) -> None:
    source = open_source(str(test_video))
    await source.open()
    assert source.native_fps == pytest.approx(VIDEO_FPS)
    assert not source.live
    async with (
        running_server(repository) as server,
        open_channel(f"127.0.0.1:{server.port}", ChannelSecurity()) as channel,
    ):
        config = StreamConfig(model_name=ONNX_MODEL, overload_policy=OverloadPolicy.BLOCK, top_k=3)
        client = FrameStreamClient(channel, config)
        events = [event async for event in client.stream(source.frames())]
    results = [event for event in events if isinstance(event, FrameResult)]
    assert sorted(result.sequence for result in results) == list(range(1, VIDEO_FRAMES + 1))
    for result in results:
        scene = expected_scene(result.sequence)
        assert result.labels[0].label in EXPECTED_TOP1[scene], (result.sequence, result.labels)
        assert result.model_version == "1"
        assert result.latency_s is not None and result.latency_s > 0
    stats = client.stats.snapshot()
    assert (stats.frames_sent, stats.frames_answered) == (VIDEO_FRAMES, VIDEO_FRAMES)
    assert stats.frames_dropped == stats.frames_lost == stats.frames_rejected == 0
    assert stats.latency_p50_ms is not None and stats.latency_p99_ms is not None
    assert stats.latency_p50_ms <= stats.latency_p99_ms


# The edgefleet CLI as a child process.
@pytest.mark.system
async def test_cli_streams_a_video_and_a_photo_each_on_its_own_stream(
    repository: Path, test_video: Path, tmp_path: Path
) -> None:
    photo_file = tmp_path / "chelsea.png"
    photo_file.write_bytes(png_bytes(photo("chelsea")))
    output = tmp_path / "results.jsonl"
    async with running_server(repository) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet.cli", "stream", str(test_video), str(photo_file),
            "--server", f"127.0.0.1:{server.port}", "--model", ONNX_MODEL,
            "--fps", "0", "--encoding", "raw", "--output", "jsonl", str(output),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    assert "summary" in stdout.decode()
    records = [json.loads(line) for line in output.read_text().splitlines()]
    by_stream: dict[str, list[dict[str, object]]] = {}
    for record in records:
        assert record["event"] == "result", record
        by_stream.setdefault(str(record["stream"]), []).append(record)
    assert set(by_stream) == {str(test_video), str(photo_file)}
    video_results = by_stream[str(test_video)]
    assert sorted(int(str(r["sequence"])) for r in video_results) == list(
        range(1, VIDEO_FRAMES + 1)
    )
    for record in video_results:
        top = record["labels"][0]["label"]  # type: ignore[index]
        assert top in EXPECTED_TOP1[expected_scene(int(str(record["sequence"])))]
    assert by_stream[str(photo_file)][0]["labels"][0]["label"] in EXPECTED_TOP1["chelsea"]  # type: ignore[index]
    # Not a terminal: the summary also comes as one JSON object per stream on stderr.
    summaries = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert {s["source"]: s["frames_answered"] for s in summaries} == {
        str(test_video): VIDEO_FRAMES,
        str(photo_file): 1,
    }
