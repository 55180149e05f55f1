"""Tracking quality against ground truth: our tracker vs supervision's ByteTrack (the anchor).

Sequences (testkit/mot_sequences.py): real faces from scikit-image moving along known paths over
a real photo, with crossings, occlusions (behind another face, behind an occluder), faces
entering and leaving, and lines with known counts. The real server runs the real `faces`
pipeline on them over FrameStream:

1. tracking off: the raw detections of every frame (one frame in flight, BLOCK: nothing lost);
2. the same detections go to both trackers in this process: `StreamAnalytics` (the code the
   server runs per stream) and supervision's `ByteTrack`, every frame and with about half the
   frames skipped as the freshness scheduler skips them (gaps of 1 to 3 frames, capture times
   kept; ByteTrack only counts frames, which is the point of the comparison);
3. tracking on, through the server, end to end, all frames and the same skipped ones: the ids
   and line counts the stream answers.

Scored with py-motmetrics (IoU >= 0.5 to match), all sequences together. Target (issue 25):
IDF1 at or above the anchor's, and no worse than 5 points below it with frames skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import motmetrics as mm
import numpy as np

from bench.machine import describe, write_section
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.analytics.geometry import iou_matrix
from server.analytics.stream import FrameInfo, StreamAnalytics
from server.analytics.types import AnalyticsConfig, Line
from server.vision.detections import Detection
from testkit import mot_sequences as mot
from testkit.edge import running_server
from testkit.faces import copy_faces
from testkit.repositories import BUILT_MODELS

# Both trackers alike: an id after 2 matched frames, kept 1 s unseen (15 frames at 15 fps).
CONFIG = AnalyticsConfig(min_hits=2, lost_s=1.0)
MATCH_IOU = 0.5  # the MOT benchmarks' threshold for a hypothesis to match a true object

Hypotheses = list[list[tuple[int, tuple[float, float, float, float]]]]  # per kept frame


@dataclass
class Run:
    """One tracker on one sequence at one frame pattern."""

    hypotheses: Hypotheses
    lines: dict[str, tuple[int, int]] = field(default_factory=dict)


def from_pb(d: Any) -> Detection:
    return Detection(d.x_min, d.y_min, d.x_max, d.y_max, d.score, d.class_id, d.label)


def options_for(sequence: mot.MotSequence) -> fs.AnalyticsOptions:
    return fs.AnalyticsOptions(
        min_hits=CONFIG.min_hits,
        lost_seconds=CONFIG.lost_s,
        lines=[
            fs.Line(name=line.name, points=[fs.Point(x=x, y=y) for x, y in (line.start, line.end)])
            for line in sequence.lines
        ],
    )


def ours(sequence: mot.MotSequence, raw: Sequence[list[Detection]], kept: Sequence[int]) -> Run:
    config = AnalyticsConfig(
        min_hits=CONFIG.min_hits,
        lost_s=CONFIG.lost_s,
        lines=tuple(Line(line.name, line.start, line.end) for line in sequence.lines),
    )
    analytics = StreamAnalytics(config)
    run = Run([])
    for position, index in enumerate(kept):
        info = FrameInfo("mot", "faces", "1", index, index * mot.FRAME_NS)
        out = analytics.update(index / mot.FPS, raw[position], info, (mot.WIDTH, mot.HEIGHT))
        run.hypotheses.append(
            [
                (d.track_id, (d.x_min, d.y_min, d.x_max, d.y_max))
                for d in out.detections
                if d.track_id
            ]
        )
        run.lines = {count.name: (count.in_count, count.out_count) for count in out.lines}
    return run


def anchor(sequence: mot.MotSequence, raw: Sequence[list[Detection]]) -> Run:
    """supervision's ByteTrack on the kept frames, one `update` each (it counts frames)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ByteTrack is deprecated in supervision 0.28+
        import supervision as sv

        tracker = sv.ByteTrack(
            lost_track_buffer=30,  # frames at 30 fps: 1 s, scaled by frame_rate to 15 frames
            frame_rate=mot.FPS,
            minimum_consecutive_frames=CONFIG.min_hits,
        )
        zones = {
            line.name: sv.LineZone(
                sv.Point(*line.start), sv.Point(*line.end),
                triggering_anchors=(sv.Position.BOTTOM_CENTER,),
            )
            for line in sequence.lines
        }  # fmt: skip
    run = Run([])
    for detections in raw:
        boxes = np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in detections]).reshape(-1, 4)
        tracked = tracker.update_with_detections(
            sv.Detections(
                xyxy=boxes.astype(np.float32),
                confidence=np.array([d.score for d in detections], dtype=np.float32),
                class_id=np.array([d.class_id for d in detections], dtype=int),
            )
        )
        ids = [] if tracked.tracker_id is None else tracked.tracker_id.tolist()
        run.hypotheses.append(
            [
                (int(track), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
                for track, b in zip(ids, tracked.xyxy, strict=True)
            ]
        )
        for zone in zones.values():
            if len(tracked):
                zone.trigger(tracked)
    # supervision's IN is our OUT (its sides are named from the line's own frame): swapped
    # here so that both trackers are read against the same truth.
    run.lines = {name: (zone.out_count, zone.in_count) for name, zone in zones.items()}
    return run


def server_run(sequence: mot.MotSequence, results: Sequence[Any]) -> Run:
    run = Run([])
    for result in results:
        run.hypotheses.append(
            [
                (d.track_id, (d.x_min, d.y_min, d.x_max, d.y_max))
                for d in result.detections
                if d.track_id
            ]
        )
    run.lines = {c.name: (c.in_count, c.out_count) for c in results[-1].lines}
    return run


def accumulate(truth: mot.GroundTruth, kept: Sequence[int], run: Run) -> mm.MOTAccumulator:
    acc = mm.MOTAccumulator(auto_id=True)
    for index, hypotheses in zip(kept, run.hypotheses, strict=True):
        objects = truth.boxes[index]
        gt_ids = list(objects)
        gt_boxes = np.array([objects[i] for i in gt_ids], dtype=np.float64).reshape(-1, 4)
        hyp_boxes = np.array([box for _, box in hypotheses], dtype=np.float64).reshape(-1, 4)
        iou = iou_matrix(gt_boxes, hyp_boxes)
        # motmetrics' own iou_matrix uses np.asfarray, gone in numpy 2: distances given here.
        distances = np.where(iou >= MATCH_IOU, 1.0 - iou, np.nan)
        acc.update(gt_ids, [track for track, _ in hypotheses], distances)
    return acc


METRICS = ["idf1", "mota", "num_switches", "num_false_positives", "num_misses", "num_objects"]


def score(accumulators: list[mm.MOTAccumulator], names: list[str]) -> dict[str, float]:
    summary = mm.metrics.create().compute_many(
        accumulators, metrics=METRICS, names=names, generate_overall=True
    )
    row = summary.loc["OVERALL"]
    return {metric: float(row[metric]) for metric in METRICS}


async def measure(skip_seed: int, patterns: int) -> tuple[list[str], dict[str, Any]]:
    """Per tracker and frame pattern: the overall scores and the line counts per sequence."""
    sequences = mot.sequences()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        copy_faces(BUILT_MODELS, repo)
        async with (
            running_server(repo) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            stub = fs_grpc.FrameStreamServiceStub(channel)
            fractions: dict[str, mot.Box] = {}
            for name in mot.SPRITES:
                image, patch = mot.calibration_frame(name)
                (result,) = await mot.stream_frames(stub, [image], [0], None)
                assert len(result.detections) == 1, (name, result.detections)
                d = result.detections[0]
                fractions[name] = mot.fractions_from(patch, (d.x_min, d.y_min, d.x_max, d.y_max))
            runs: dict[tuple[str, str], list[tuple[str, mot.GroundTruth, list[int], Run]]] = {}
            detected = truth_total = 0
            for number, sequence in enumerate(sequences):
                truth = mot.ground_truth(sequence, fractions)
                images = mot.frames(sequence)
                every = list(range(sequence.length))
                raw_results = await mot.stream_frames(stub, images, every, None)
                raw = [[from_pb(d) for d in r.detections] for r in raw_results]
                detected += sum(len(r) for r in raw)
                truth_total += sum(len(b) for b in truth.boxes)
                # Several skip patterns: one pattern decides by chance which frames a
                # crossing falls between, and three sequences are few.
                for pattern, label, kept in (
                    ("all", sequence.name, every),
                    *(
                        (
                            "skipped",
                            f"{sequence.name}#{k}",
                            mot.keep_like_scheduler(sequence.length, skip_seed + 10 * k + number),
                        )
                        for k in range(patterns)
                    ),
                ):
                    picked = [raw[i] for i in kept]
                    tracked = await mot.stream_frames(stub, images, kept, options_for(sequence))
                    for tracker, run in (
                        ("ours", ours(sequence, picked, kept)),
                        ("anchor", anchor(sequence, picked)),
                        ("server", server_run(sequence, tracked)),
                    ):
                        runs.setdefault((tracker, pattern), []).append((label, truth, kept, run))
                print(sequence.name, "truth lines", truth.line_counts, flush=True)
    figures: dict[str, Any] = {"detected": detected, "truth": truth_total, "fractions": fractions}
    for (tracker, pattern), items in runs.items():
        accs = [accumulate(truth, kept, run) for _, truth, kept, run in items]
        figures[f"{tracker}/{pattern}"] = {
            "score": score(accs, [name for name, *_ in items]),
            "lines": {name: (truth.line_counts, run.lines) for name, truth, _, run in items},
            "frames": sum(len(kept) for _, _, kept, _ in items),
        }
        print(tracker, pattern, figures[f"{tracker}/{pattern}"], flush=True)
    return [s.name for s in sequences], figures


def _lines_cell(
    lines: dict[str, tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]],
) -> str:
    """How many (run, line) counts equal the truth, in and out, and the ones that do not."""
    exact = total = 0
    wrong = []
    for run, (truth, got) in lines.items():
        for name, counts in truth.items():
            total += 1
            if got.get(name, (0, 0)) == counts:
                exact += 1
            else:
                found = got.get(name, (0, 0))
                wrong.append(f"{run}/{name} {found[0]}/{found[1]} (truth {counts[0]}/{counts[1]})")
    return f"{exact} of {total}" + (f": {'; '.join(wrong)}" if wrong else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="of the skipped-frame patterns")
    parser.add_argument("--patterns", type=int, default=3, help="skipped-frame patterns")
    parser.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = parser.parse_args()
    machine = describe()
    started = time.monotonic()
    names, figures = asyncio.run(measure(args.seed, args.patterns))
    elapsed = time.monotonic() - started
    rows = []
    labels = {
        "ours": "ours (`StreamAnalytics`, in process)",
        "server": "ours, through the server (tracking on)",
        "anchor": "supervision 0.30.9 `ByteTrack` (anchor)",
    }
    skipped = f"~50% skipped, {args.patterns} patterns"
    for pattern, label in (("all", "every frame"), ("skipped", skipped)):
        for tracker in ("ours", "server", "anchor"):
            entry = figures[f"{tracker}/{pattern}"]
            s = entry["score"]
            rows.append(
                f"| {labels[tracker]} | {label} | {entry['frames']} | **{100 * s['idf1']:.1f}** | "
                f"{100 * s['mota']:.1f} | {int(s['num_switches'])} | "
                f"{int(s['num_false_positives'])} | {int(s['num_misses'])} | "
                f"{_lines_cell(entry['lines'])} |"
            )
    delta_all = 100 * (
        figures["ours/all"]["score"]["idf1"] - figures["anchor/all"]["score"]["idf1"]
    )
    delta_skip = 100 * (
        figures["ours/skipped"]["score"]["idf1"] - figures["anchor/skipped"]["score"]["idf1"]
    )
    body = "\n".join(
        [
            "## Tracking quality (`bench/bench_tracking_quality.py`)",
            "",
            f"Machine: {machine}. Run took {elapsed:.0f} s.",
            "",
            f"Sequences (`testkit/mot_sequences.py`, {', '.join(names)}; 640x480 at 15 fps): "
            "real faces from scikit-image (astronaut, cameraman, three Labeled Faces in the "
            "Wild crops) moving along known paths over the `rocket` photo, with head-on "
            "crossings where the nearer face hides the other, a face passing behind an "
            "occluder (the `coffee` photo), faces entering and leaving at the edges, and lines "
            "with known counts. Detections: the real `faces` pipeline (MTCNN) through the real "
            f"server with tracking off ({figures['detected']} detections for "
            f"{figures['truth']} visible true faces, every frame), fed to both trackers; the "
            "server row is the same stream with tracking on, end to end. ~50% skipped: the "
            "frames the freshness scheduler would leave (gaps of 1 to 3 frames, 2 on average, "
            f"capture times kept), {args.patterns} random patterns per sequence scored "
            "together; ByteTrack counts frames, ours uses the capture times. Both "
            f"trackers: id after {CONFIG.min_hits} matched frames, kept {CONFIG.lost_s} s "
            "unseen (ByteTrack: `lost_track_buffer=30, frame_rate=15`, i.e. 15 frames). "
            "py-motmetrics 1.4 over all sequences, IoU >= 0.5 to match; a face counts when at "
            "least half of its box is visible.",
            "",
            "| tracker | frames | frames scored | IDF1 % | MOTA % | ID switches | FP | misses | "
            "line counts (in and out) equal to the truth |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
            f"IDF1, ours minus the anchor: {delta_all:+.1f} points every frame, "
            f"{delta_skip:+.1f} points with frames skipped (target: >= 0 and >= -5). "
            "The anchor's line counts are supervision's `LineZone` on its tracks, at the same "
            "anchor (bottom centre), its IN and OUT swapped to our convention.",
            "",
            "Read with care: three sequences and about 600 true boxes are a small sample (one "
            "ID switch moves IDF1 by a point or more; the skipped rows pool 3 patterns for that "
            "reason). Where the anchor's line counts fall short, supervision's `LineZone` did "
            "not count the cameraman crossing the door while hidden behind the astronaut "
            "(`crossing`), nor a face seen for only a few frames before it crosses (`crowd`, "
            "entering at the bottom edge); ours keeps each track's last side, so a crossing made "
            "out of sight counts when the face comes out. The price of the smoother velocity: "
            "objects that reverse at once (the CPU benchmark's, bouncing off the frame's edges) "
            "are followed a little worse (see that section's ids column).",
            "",
            'Before the tracker smoothed its velocity over capture time (commit "Tracker: '
            'smooth velocity over capture time, not per frame"; it took 60% of each new '
            "measurement per frame), the same script on the same machine (one skip pattern, "
            "the crowd's last face stopping at x = 450) gave ours IDF1 83.9 every frame with 4 "
            "ID switches against the anchor's 97.4 with 0, and 90.6 against 95.1 with frames "
            "skipped: a face half hidden for one frame (its box shrinks, its centre seems to "
            "stop) wrecked the velocity, and the coasting track missed the face when it came "
            "out from behind the other face or the occluder.",
            "",
            "Reproduce: `.venv/bin/python -m bench.bench_tracking_quality` "
            "(needs `make models`; `make install` installs supervision and motmetrics).",
        ]
    )
    if args.no_write:
        print(body)
    else:
        write_section("tracking-quality", body)
    print(body)


if __name__ == "__main__":
    main()
