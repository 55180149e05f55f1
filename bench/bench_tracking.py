"""CPU per frame of stream analytics (tracking + zones + lines + events), without a model.

N objects move at constant velocity (bouncing off the frame's edges) through a 1920x1080 frame
with 4 zones of 8 points and 4 lines; detections jitter by a pixel or two and 5% are missed.
The same `StreamAnalytics` the server runs per stream is fed the ground-truth boxes, frame
after frame at 25 fps capture times, and again with every other frame skipped (as the
scheduler drops frames under load). CPU is this thread's (`time.thread_time`); the ids column
counts the distinct track ids given (ideal: N). Target: < 1 ms per frame at 50 tracks.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.machine import describe, write_section
from server.analytics.stream import FrameInfo, StreamAnalytics
from server.analytics.types import AnalyticsConfig, Line, Zone
from server.vision.detections import Detection

WIDTH, HEIGHT = 1920, 1080
FPS = 25.0


def octagon(cx: float, cy: float, r: float) -> tuple[tuple[float, float], ...]:
    angles = np.arange(8) * np.pi / 4
    return tuple((cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles)


def config() -> AnalyticsConfig:
    zones = tuple(Zone(f"zone{i}", octagon(WIDTH * (i + 1) / 5, HEIGHT / 2, 200)) for i in range(4))
    lines = (
        Line("v1", (WIDTH / 3, 0), (WIDTH / 3, HEIGHT)),
        Line("v2", (2 * WIDTH / 3, 0), (2 * WIDTH / 3, HEIGHT)),
        Line("h1", (0, HEIGHT / 3), (WIDTH, HEIGHT / 3)),
        Line("h2", (0, 2 * HEIGHT / 3), (WIDTH, 2 * HEIGHT / 3)),
    )
    return AnalyticsConfig(min_hits=2, lost_s=1.0, zones=zones, lines=lines)


def scene(objects: int, frames: int, seed: int = 0) -> list[list[Detection]]:
    """Per frame, the visible objects' boxes (5% missed), class 0, score 0.6..0.95."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(40, 90, size=(objects, 2))
    position = rng.uniform([0, 0], [WIDTH - 100, HEIGHT - 100], size=(objects, 2))
    # Pixels per frame: slow enough that a box overlaps itself across one skipped frame.
    velocity = rng.uniform(-4, 4, size=(objects, 2))
    scores = rng.uniform(0.6, 0.95, size=objects)
    result = []
    for _ in range(frames):
        position += velocity
        for axis, limit in ((0, WIDTH), (1, HEIGHT)):
            out = (position[:, axis] < 0) | (position[:, axis] + size[:, axis] > limit)
            velocity[out, axis] *= -1
            position[:, axis] = np.clip(position[:, axis], 0, limit - size[:, axis])
        jitter = rng.normal(0, 1.0, size=(objects, 4))
        seen = rng.random(objects) >= 0.05
        result.append(
            [
                Detection(
                    float(position[i, 0] + jitter[i, 0]),
                    float(position[i, 1] + jitter[i, 1]),
                    float(position[i, 0] + size[i, 0] + jitter[i, 2]),
                    float(position[i, 1] + size[i, 1] + jitter[i, 3]),
                    float(scores[i]),
                )
                for i in range(objects)
                if seen[i]
            ]
        )
    return result


def measure(objects: int, frames: int, every: int) -> dict[str, float]:
    boxes = scene(objects, frames)
    analytics = StreamAnalytics(config())
    per_frame: list[float] = []
    ids: set[int] = set()
    events = 0
    for index in range(0, frames, every):
        info = FrameInfo("bench", "synthetic", "1", index, int(index / FPS * 1e9))
        start = time.thread_time()
        outcome = analytics.update(index / FPS, boxes[index], info, (WIDTH, HEIGHT))
        per_frame.append(time.thread_time() - start)
        events += len(outcome.events)
        ids.update(d.track_id for d in outcome.detections if d.track_id)
    steady = per_frame[len(per_frame) // 10 :]  # after the tracks are up
    steady.sort()
    return {
        "mean_ms": 1000 * statistics.fmean(steady),
        "p50_ms": 1000 * steady[len(steady) // 2],
        "p99_ms": 1000 * steady[int(len(steady) * 0.99)],
        "ids": len(ids),
        "events_per_frame": events / len(per_frame),
        "frames": len(per_frame),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = parser.parse_args()
    machine = describe()
    rows = []
    for objects in (10, 50, 200):
        for every, label in ((1, "every frame"), (2, "every other frame")):
            figures = measure(objects, args.frames, every)
            print(objects, label, {k: round(v, 3) for k, v in figures.items()}, flush=True)
            rows.append(
                f"| {objects} | {label} | {int(figures['frames'])} | "
                f"**{figures['mean_ms']:.3f}** | {figures['p50_ms']:.3f} | "
                f"{figures['p99_ms']:.3f} | {int(figures['ids'])} | "
                f"{figures['events_per_frame']:.1f} |"
            )
    body = "\n".join(
        [
            "## Stream analytics CPU (`bench/bench_tracking.py`)",
            "",
            f"Machine: {machine}.",
            "One stream's `StreamAnalytics` (server/analytics/: tracker, 4 zones of 8 points, "
            "4 lines, events) fed N objects moving at constant velocity through 1920x1080 "
            "(1 px jitter, 5% missed), 25 fps capture times, and again with every other frame "
            "skipped. CPU of the calling thread per frame after the first 10% of frames; "
            "ids = distinct track ids given (ideal N). Target: < 1 ms per frame at 50 tracks.",
            "",
            "| objects | frames fed | frames | CPU mean ms | p50 ms | p99 ms | ids | "
            "events/frame |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Read with care: the 10-object rows are the fixed cost (about 60 numpy calls a "
            "frame, 1 to 3 us each on a loaded machine); Python per track is the rest. ids "
            "above N with frames skipped are objects that crossed each other while both moved "
            "8 px a step.",
            "",
            f"Reproduce: `.venv/bin/python -m bench.bench_tracking --frames {args.frames}`.",
        ]
    )
    if args.no_write:
        print(body)
    else:
        write_section("tracking", body)


if __name__ == "__main__":
    main()
