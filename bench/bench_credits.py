"""Demand-driven cameras: flow credits off (before) and on (after), in the same run.

The server runs as its own process (`edgefleet serve`, the default repository's `faces`
pipeline: MTCNN, far slower than a 30 fps camera here). The cameras run in this process with
the client library (`FrameStreamClient` over one shared channel, as `edgefleet stream` runs
them): each is a synthetic live camera at 30 fps, 1280x720, cycling real photos (scikit-image's
astronaut, chelsea, coffee; a fresh copy per frame stands in for the camera's decoded frame),
JPEG quality 85. Per row, over the measured seconds: frame bytes on the wire, client CPU
(this process: sources, encoding, gRPC) and server CPU per answered frame, result age (capture
to answer, one host so one clock) p50/p95, answered frames per second, and frames the server
replaced per answered frame. With `--repeat N` each row is the median of N runs, credits off
and on alternating which goes first (on a shared machine one run swings by 2x either way).
Writes the `<!-- bench:credits -->` section of docs/benchmarks.md.

    .venv/bin/python -m bench.bench_credits [--seconds 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import psutil

from bench.machine import describe, write_section
from client.frames import CapturedFrame
from client.security import ChannelSecurity, open_channel
from client.sources import until_stopped
from client.stream import FrameResult, FrameStreamClient, StreamConfig, _Outgoing
from testkit.edge import start_serve
from testkit.faces import copy_faces
from testkit.media import resized_photo
from testkit.repositories import BUILT_MODELS, ROOT

MODEL = "faces"
CAMERAS = tuple(int(n) for n in os.environ.get("BENCH_CREDITS_CAMERAS", "1,4,16").split(","))
FPS = 30.0
WIDTH, HEIGHT = 1280, 720
WARM_UP_S = 2.0


def warm_up_s(cameras: int) -> float:
    """Until the first frame of every camera has been answered (the pipeline takes 8 at once)."""
    return max(WARM_UP_S, 0.5 * cameras)


def measured_s(cameras: int, seconds: float) -> float:
    """Several rounds of every camera, however many there are."""
    return max(seconds, 2.5 * cameras)


class MeteredClient(FrameStreamClient):
    """Counts the frame bytes it writes (every frame written is tracked first)."""

    bytes_sent = 0

    def _track(self, outgoing: _Outgoing, now: float) -> None:
        super()._track(outgoing, now)
        self.bytes_sent += len(outgoing.request.frame.data)


async def live_camera(pictures: list[np.ndarray]) -> AsyncIterator[CapturedFrame]:
    """A frame every 1/FPS s, stamped when it is read (a reader that falls behind gets the
    next frame at once, not a burst)."""
    loop = asyncio.get_running_loop()
    next_at, index = loop.time(), 0
    while True:
        await asyncio.sleep(max(next_at - loop.time(), 0))
        next_at = max(next_at + 1 / FPS, loop.time())
        index += 1
        yield CapturedFrame(pictures[index % len(pictures)].copy(), time.time_ns())


@dataclass
class Window:
    measuring: bool = False
    ages_ms: list[float] = field(default_factory=list)


@dataclass
class Row:
    cameras: int
    credits: bool
    answered_fps: float
    kb_per_answer: float
    client_cpu_ms: float
    server_cpu_ms: float
    age_p50: float
    age_p95: float
    replaced_per_answer: float
    skipped: int


async def camera_task(client: MeteredClient, pictures: list[np.ndarray], stop: asyncio.Event,
                      window: Window) -> None:  # fmt: skip
    frames = until_stopped(live_camera(pictures), stop)
    async for event in client.stream(frames):
        if window.measuring and isinstance(event, FrameResult):
            window.ages_ms.append((time.time_ns() - event.capture_time_unix_ns) / 1e6)


async def measure(port: int, server: psutil.Process, cameras: int, credits: bool,
                  seconds: float, pictures: list[np.ndarray]) -> Row:  # fmt: skip
    stop, window = asyncio.Event(), Window()
    async with open_channel(f"127.0.0.1:{port}", ChannelSecurity()) as channel:
        clients = [
            MeteredClient(
                channel,
                StreamConfig(MODEL, source_fps=FPS, flow_credits=credits, stream_id=f"cam{index}"),
            )  # fmt: skip
            for index in range(cameras)
        ]
        tasks = [
            asyncio.create_task(camera_task(client, pictures, stop, window)) for client in clients
        ]
        await asyncio.sleep(warm_up_s(cameras))

        def totals() -> tuple[int, int, int, int]:
            stats = [client.stats for client in clients]
            return (sum(s.frames_answered for s in stats), sum(c.bytes_sent for c in clients),
                    sum(s.frames_dropped for s in stats),
                    sum(s.frames_skipped_source for s in stats))  # fmt: skip

        answered0, bytes0, dropped0, skipped0 = totals()
        cpu0, server0 = time.process_time(), sum(server.cpu_times()[:2])
        started = time.monotonic()
        window.measuring = True
        await asyncio.sleep(seconds)
        window.measuring = False
        elapsed = time.monotonic() - started
        cpu1, server1 = time.process_time(), sum(server.cpu_times()[:2])
        answered1, bytes1, dropped1, skipped1 = totals()
        stop.set()
        await asyncio.gather(*tasks)
    answered = max(answered1 - answered0, 1)
    ages = np.array(window.ages_ms or [float("nan")])
    return Row(
        cameras=cameras, credits=credits, answered_fps=(answered1 - answered0) / elapsed,
        kb_per_answer=(bytes1 - bytes0) / answered / 1024,
        client_cpu_ms=(cpu1 - cpu0) * 1000 / answered,
        server_cpu_ms=(server1 - server0) * 1000 / answered,
        age_p50=float(np.percentile(ages, 50)), age_p95=float(np.percentile(ages, 95)),
        replaced_per_answer=(dropped1 - dropped0) / answered, skipped=skipped1 - skipped0,
    )  # fmt: skip


async def run_all(port: int, server: psutil.Process, seconds: float, repeat: int) -> list[Row]:
    pictures = [
        cv2.cvtColor(resized_photo(name, WIDTH, HEIGHT), cv2.COLOR_RGB2BGR)
        for name in ("astronaut", "chelsea", "coffee")
    ]
    await measure(port, server, 1, True, 1.0, pictures)  # loads and warms the pipeline
    rows = []
    for cameras in CAMERAS:
        runs: dict[bool, list[Row]] = {False: [], True: []}
        for attempt in range(repeat):
            # Alternate which goes first: the one after a loaded run meets its leftovers.
            for credits in (False, True) if attempt % 2 == 0 else (True, False):
                row = await measure(port, server, cameras, credits, measured_s(cameras, seconds),
                                    pictures)  # fmt: skip
                print(row, flush=True)
                runs[credits].append(row)
        rows += [median_row(runs[False]), median_row(runs[True])]
    return rows


def median_row(runs: list[Row]) -> Row:
    """Each figure's median over the runs (figures of different runs may mix)."""
    figures = {
        spec.name: statistics.median(getattr(run, spec.name) for run in runs)
        for spec in dataclasses.fields(Row)
        if spec.name not in ("cameras", "credits")
    }
    return dataclasses.replace(runs[0], **figures)


def render(rows: list[Row], seconds: float, repeat: int) -> str:
    lines = [
        "## Demand-driven cameras: flow credits (bench/bench_credits.py)",
        "",
        f"Machine: {describe()}.",
        "",
        f"`edgefleet serve` (own process) with the default repository's `{MODEL}` pipeline; "
        f"N synthetic live cameras at {FPS:g} fps, {WIDTH}x{HEIGHT}, real photos, JPEG 85, "
        "streamed by the client library in one process over one channel (DROP_OLDEST, the "
        f"server's default window). A warm-up of max({WARM_UP_S:g} s, 0.5 s per camera), then "
        f"max({seconds:g} s, 2.5 s per camera) measured per row; "
        "credits off and on run back to back against the same server"
        + (
            f", {repeat} times each, alternating which goes first; each figure is the median of "
            f"the {repeat}"
            if repeat > 1
            else ""
        )
        + ". Per answered frame: "
        "frame bytes written to the wire, CPU of the client process (camera reads, encoding, "
        "gRPC) and of the server process, and frames the server replaced; result age is capture "
        "to answer on one host.",
        "",
        "| cameras | credits | answered fps | KiB sent / answer | client CPU ms / answer | "
        "server CPU ms / answer | age p50 ms | age p95 ms | replaced / answer | "
        "skipped unencoded |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.cameras} | {'on' if row.credits else 'off'} | {row.answered_fps:.1f} | "
            f"{row.kb_per_answer:.0f} | {row.client_cpu_ms:.1f} | {row.server_cpu_ms:.1f} | "
            f"{row.age_p50:.0f} | {row.age_p95:.0f} | {row.replaced_per_answer:.2f} | "
            f"{row.skipped} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (median)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        copy_faces(BUILT_MODELS, repository)
        process = start_serve(
            Path(tmp) / "serve", "--repository", str(repository), "--port", "0",
            "--metrics-port", "-1", "--log-level", "WARNING", "--planner", "manifest",
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout_s=600,
        )  # fmt: skip
        try:
            server = psutil.Process(process.pid)
            rows = asyncio.run(run_all(process.port, server, args.seconds, args.repeat))
        finally:
            process.stop(grace_s=10)
    text = render(rows, args.seconds, args.repeat)
    print(text)
    if not args.no_write:
        write_section("credits", text)


if __name__ == "__main__":
    main()
