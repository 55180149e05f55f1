"""Camera client benchmarks: what a frame costs the client, and how many cameras one server takes.

1. Per frame, raw vs JPEG (quality 85) at 640x480 and 1920x1080: client encode time, bytes on
   the wire (the serialised StreamRequest), and end-to-end fps streaming flat out to a real
   server. Raw is the baseline: no client CPU, most bytes.
2. How many 30 fps cameras (640x480 JPEG, DROP_OLDEST, one FrameStream each) one server on this
   machine sustains with the default model before it starts dropping frames.
3. Video decode rate, OpenCV vs PyAV (PyAV only when `av` is installed; it is not a dependency).

The server runs as a subprocess (`edgefleet serve`), this process is the cameras: on this
machine both share the same cores, as a gateway box running its own server would.
Writes the `<!-- bench:client -->` section of docs/benchmarks.md.

    .venv/bin/python -m bench.bench_client [--seconds 6] [--max-streams 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.machine import describe, write_section
from client.frames import CapturedFrame, Encoding, encode_frame
from client.security import ChannelSecurity, open_channel
from client.sources import paced, until_stopped
from client.sources.pattern import TestPatternSource
from client.stream import (
    FrameResult,
    FrameStreamClient,
    OverloadPolicy,
    StreamConfig,
)
from protos.edgefleet.v1 import frame_stream_pb2 as pb
from testkit.edge import start_serve
from testkit.media import photo
from testkit.repositories import BUILT_MODELS

MODEL = "efficientnet_lite0"
SIZES = ((640, 480), (1920, 1080))
JPEG_QUALITY = 85
CAMERA_FPS = 30.0


def photo_at(width: int, height: int) -> np.ndarray:
    """A natural photo (JPEG cost depends on content; a test pattern would flatter it), BGR."""
    resized: np.ndarray = cv2.resize(
        cv2.cvtColor(photo("astronaut"), cv2.COLOR_RGB2BGR), (width, height)
    )
    return resized


@contextlib.contextmanager
def edge_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        process = start_serve(
            Path(folder), "--repository", str(BUILT_MODELS), "--model", MODEL, "--port", "0",
            "--metrics-port", "-1", "--http-port", "-1", "--log-level", "WARNING",
            timeout_s=120, poll_s=0.1,
        )  # fmt: skip
        try:
            yield f"127.0.0.1:{process.port}"
        finally:
            process.stop(grace_s=30)


def encode_costs(repeats: int) -> list[dict[str, object]]:
    rows = []
    for width, height in SIZES:
        frame = CapturedFrame(photo_at(width, height), time.time_ns())
        for encoding in (Encoding.RAW, Encoding.JPEG):
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                encoded = encode_frame(frame, encoding, JPEG_QUALITY)
                timings.append(time.perf_counter() - started)
            request = pb.StreamRequest(
                frame=pb.Frame(sequence=1, capture_time_unix_ns=1, data=encoded.data,
                               width=width, height=height)
            )  # fmt: skip
            rows.append(
                {"size": f"{width}x{height}", "encoding": encoding.value,
                 "encode_ms": statistics.median(timings) * 1e3, "wire_bytes": request.ByteSize()}
            )  # fmt: skip
    return rows


async def repeated(frame: np.ndarray, count: int) -> AsyncIterator[CapturedFrame]:
    for _ in range(count):
        yield CapturedFrame(frame, time.time_ns())


async def end_to_end_fps(
    target: str, width: int, height: int, encoding: Encoding, count: int
) -> float:
    frame = photo_at(width, height)
    async with open_channel(target, ChannelSecurity()) as channel:
        # Warm up the connection and the model's batcher first.
        config = StreamConfig(MODEL, encoding=encoding, overload_policy=OverloadPolicy.BLOCK)
        warm = FrameStreamClient(channel, config)
        async for _ in warm.stream(repeated(frame, 4)):
            pass
        client = FrameStreamClient(
            channel, StreamConfig(MODEL, encoding=encoding, overload_policy=OverloadPolicy.BLOCK)
        )
        started = time.perf_counter()
        answered = 0
        async for event in client.stream(repeated(frame, count)):
            answered += isinstance(event, FrameResult)
        return answered / (time.perf_counter() - started)


async def cameras(target: str, streams: int, seconds: float) -> dict[str, float]:
    """`streams` paced 30 fps cameras for `seconds`; what was offered, answered and dropped."""
    stop = asyncio.Event()
    async with open_channel(target, ChannelSecurity()) as channel:
        clients = [
            FrameStreamClient(channel, StreamConfig(MODEL, stream_id=f"cam-{index}"))
            for index in range(streams)
        ]

        async def run(client: FrameStreamClient) -> None:
            frames = until_stopped(
                paced(TestPatternSource(640, 480, CAMERA_FPS).frames(), CAMERA_FPS), stop
            )
            async for _ in client.stream(frames):
                pass

        tasks = [asyncio.create_task(run(client)) for client in clients]
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    snaps = [client.stats.snapshot() for client in clients]
    generated = sum(s.frames_sent + s.frames_dropped_client for s in snaps)
    dropped = sum(s.frames_dropped + s.frames_dropped_client + s.frames_lost for s in snaps)
    latencies = [s.latency_p95_ms for s in snaps if s.latency_p95_ms is not None]
    return {
        "streams": streams,
        "offered_fps": generated / elapsed,
        "answered_fps": sum(s.frames_answered for s in snaps) / elapsed,
        "drop_pct": 100.0 * dropped / max(generated, 1),
        "p95_ms": max(latencies) if latencies else float("nan"),
    }


def decode_rates(frames: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    # Optional, not a dependency: imported by name so type checking does not require it.
    av: Any = None
    with contextlib.suppress(ImportError):
        av = importlib.import_module("av")
    with tempfile.TemporaryDirectory() as folder:
        for width, height in SIZES:
            image = photo_at(width, height)
            path = Path(folder) / f"clip_{width}.mp4"
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, (width, height)
            )
            for index in range(frames):
                writer.write(np.roll(image, index * 4, axis=1))
            writer.release()
            started = time.perf_counter()
            capture = cv2.VideoCapture(str(path))
            decoded = 0
            while capture.read()[0]:
                decoded += 1
            capture.release()
            fps = decoded / (time.perf_counter() - started)
            rows.append({"size": f"{width}x{height}", "reader": f"OpenCV {cv2.__version__}",
                         "fps": fps, "frames": decoded})  # fmt: skip
            if av is not None:
                started = time.perf_counter()
                with av.open(str(path)) as container:
                    decoded = sum(
                        1
                        for f in container.decode(video=0)
                        if f.to_ndarray(format="bgr24") is not None
                    )
                fps = decoded / (time.perf_counter() - started)
                rows.append({"size": f"{width}x{height}", "reader": f"PyAV {av.__version__}",
                             "fps": fps, "frames": decoded})  # fmt: skip
    return rows


async def measure(args: argparse.Namespace) -> str:
    costs = encode_costs(args.repeats)
    decode = decode_rates(args.decode_frames)
    with edge_server() as target:
        # Rounds interleave the configurations so a burst of load from other processes on
        # this shared machine does not land on one of them; the median of the rounds is kept.
        samples: dict[int, list[float]] = {index: [] for index in range(len(costs))}
        for _ in range(args.rounds):
            for index, row in enumerate(costs):
                width, height = map(int, str(row["size"]).split("x"))
                encoding = Encoding(str(row["encoding"]))
                fps = await end_to_end_fps(target, width, height, encoding, args.frames)
                samples[index].append(fps)
        for index, row in enumerate(costs):
            row["e2e_fps"] = statistics.median(samples[index])
        capacity = []
        for streams in range(1, args.max_streams + 1):
            level = await cameras(target, streams, args.seconds)
            capacity.append(level)
            # Judged against what the cameras really produced: on a saturated machine the
            # client's own pacing can fall short of 30 fps, which is not the server dropping.
            offered = level["offered_fps"]
            sustained = level["drop_pct"] <= 1.0 and level["answered_fps"] >= 0.95 * offered
            level["sustained"] = float(sustained)
            level["paced_ok"] = float(offered >= 0.95 * CAMERA_FPS * streams)
            if not sustained:
                break
    return report(costs, decode, capacity, args)


def report(costs: list[dict[str, object]], decode: list[dict[str, object]],
           capacity: list[dict[str, float]], args: argparse.Namespace) -> str:  # fmt: skip
    lines = [
        "## client: frame cost raw vs JPEG, camera capacity, video decode",
        "",
        "`bench/bench_client.py`",
        "",
        f"Run {describe()}.",
        "",
        "The server (`edgefleet serve`, default model efficientnet_lite0 ONNX) runs as a",
        "subprocess on the same cores as this client process; the machine is shared, so",
        "figures are noisy.",
        "",
        f"### Cost per frame (photo content, JPEG quality {JPEG_QUALITY}; raw is the baseline)",
        "",
        f"Encode: median of {args.repeats} runs. End-to-end: {args.frames} frames flat out on",
        "one stream (BLOCK policy, so none dropped), server decode + preprocess + model included;",
        f"median of {args.rounds} interleaved rounds.",
        "",
        "| size | encoding | encode ms | bytes on the wire | vs raw | end-to-end fps |",
        "|---|---|---:|---:|---:|---:|",
    ]
    raw_bytes = {row["size"]: row["wire_bytes"] for row in costs if row["encoding"] == "raw"}
    for row in costs:
        ratio = float(str(row["wire_bytes"])) / float(str(raw_bytes[row["size"]]))
        lines.append(
            f"| {row['size']} | {row['encoding']} | {float(str(row['encode_ms'])):.2f} | "
            f"{int(str(row['wire_bytes'])):,} | {ratio:.3f}x | {float(str(row['e2e_fps'])):.1f} |"
        )
    lines += [
        "",
        "### 30 fps cameras one server sustains",
        "",
        f"640x480 JPEG test pattern, drop-oldest, {args.seconds:g} s per level.",
        "",
        "Sustained = at most 1% of frames dropped (server or client side) and at least 95% of the",
        "frames the cameras produced answered. Levels stop at the first that is not sustained.",
        "`cameras kept pace` says whether the client really produced 30 fps per camera; when it",
        "did not, the machine (shared with the server) was saturated before the server dropped.",
        "",
        "| streams | offered fps | answered fps | dropped % | worst stream p95 ms | sustained "
        "| cameras kept pace |",
        "|---:|---:|---:|---:|---:|---|---|",
    ]
    for level in capacity:
        verdict = "yes" if level["sustained"] else "no"
        paced_ok = "yes" if level["paced_ok"] else "no"
        lines.append(
            f"| {int(level['streams'])} | {level['offered_fps']:.1f} | "
            f"{level['answered_fps']:.1f} | {level['drop_pct']:.1f} | {level['p95_ms']:.0f} | "
            f"{verdict} | {paced_ok} |"
        )
    held = [int(level["streams"]) for level in capacity if level["sustained"]]
    at_pace = [
        int(level["streams"]) for level in capacity if level["sustained"] and level["paced_ok"]
    ]
    lines += [
        "",
        f"**Result: {max(held) if held else 0} camera stream(s) before the server drops frames; "
        f"{max(at_pace) if at_pace else 0} of them at a full 30 fps.**",
    ]
    lines += [
        "",
        f"### Video decode: OpenCV vs PyAV ({args.decode_frames} frames, mp4v written by OpenCV)",
        "",
        "| size | reader | decode fps |",
        "|---|---|---:|",
    ]
    for row in decode:
        lines.append(f"| {row['size']} | {row['reader']} | {float(str(row['fps'])):.0f} |")
    if not any(str(row["reader"]).startswith("PyAV") for row in decode):
        lines.append("")
        lines.append("PyAV is not installed in this environment (`pip install av` to compare).")
    lines += [
        "",
        "Why OpenCV: it is already a dependency (the server decodes with it), its bundled FFmpeg",
        "reads files, RTSP and HTTP streams and V4L2 webcams, and it hands back BGR numpy arrays",
        "with no conversion step. PyAV would add a second FFmpeg build; at camera resolutions both",
        "decode far faster than the model classifies (compare the decode fps with the",
        "end-to-end fps above), so decode speed does not decide it.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--max-streams", type=int, default=8)
    parser.add_argument("--decode-frames", type=int, default=90)
    args = parser.parse_args()
    body = asyncio.run(measure(args))
    write_section("client", body)
    print(body)


if __name__ == "__main__":
    main()
