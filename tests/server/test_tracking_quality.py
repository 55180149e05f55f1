"""Tracking quality end to end: two real faces (scikit-image's astronaut and cameraman) cross
head-on over a line, the nearer hiding the other, and a third crosses it below them, on a real
photo (testkit/mot_sequences.py).
The real server runs the real `faces` pipeline with tracking on; the line counts it answers
equal the ground truth, and py-motmetrics finds at most one ID switch, with every frame and with
about half of them skipped as the freshness scheduler skips them (capture times kept).

Where each face lies in its pasted patch is measured first through the same server (tracking
off), so the ground-truth boxes are the detector's own kind of box. Real server, real model,
real gRPC: a system test (MTCNN on about 60 frames)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import motmetrics as mm
import numpy as np
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.analytics.geometry import iou_matrix
from testkit import mot_sequences as mot
from testkit.edge import running_server
from testkit.faces import copy_faces

pytestmark = pytest.mark.system


def id_switches(truth: mot.GroundTruth, kept: Sequence[int], results: Sequence[Any]) -> int:
    acc = mm.MOTAccumulator(auto_id=True)
    for index, result in zip(kept, results, strict=True):
        objects = truth.boxes[index]
        tracked = [d for d in result.detections if d.track_id]
        gt = np.array([objects[i] for i in objects], dtype=np.float64).reshape(-1, 4)
        hyp = np.array([[d.x_min, d.y_min, d.x_max, d.y_max] for d in tracked]).reshape(-1, 4)
        iou = iou_matrix(gt, hyp)
        acc.update(
            list(objects), [d.track_id for d in tracked], np.where(iou >= 0.5, 1 - iou, np.nan)
        )
    summary = mm.metrics.create().compute(acc, metrics=["num_switches", "idf1"], name="crossing")
    return int(summary["num_switches"].iloc[0])


async def test_faces_crossing_keep_their_ids_and_the_line_counts_them(
    tmp_path: Path, built_models: Path
):
    sequence = mot.short_crossing()
    images = mot.frames(sequence)
    (line,) = sequence.lines
    options = fs.AnalyticsOptions(
        min_hits=2,
        lost_seconds=1.0,
        lines=[
            fs.Line(name=line.name, points=[fs.Point(x=x, y=y) for x, y in (line.start, line.end)])
        ],
    )
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    async with (
        running_server(repo) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = fs_grpc.FrameStreamServiceStub(channel)
        fractions = {}
        for name in {mover.sprite for mover in sequence.movers}:
            image, patch = mot.calibration_frame(name)
            (still,) = await mot.stream_frames(stub, [image], [0], None, "crossing")
            (face,) = still.detections
            fractions[name] = mot.fractions_from(
                patch, (face.x_min, face.y_min, face.x_max, face.y_max)
            )
        truth = mot.ground_truth(sequence, fractions)
        # Each face crosses the line once: two left to right (IN), one right to left.
        assert truth.line_counts == {line.name: (2, 1)}
        for kept in (list(range(sequence.length)), mot.keep_like_scheduler(sequence.length)):
            results = await mot.stream_frames(stub, images, kept, options, "crossing")
            counts = [(c.name, c.in_count, c.out_count) for c in results[-1].lines]
            assert counts == [(line.name, 2, 1)], (kept, counts)
            assert id_switches(truth, kept, results) <= 1, kept
            # Every face was tracked: three ids, not one id jumping between the crossing two.
            ids = {d.track_id for r in results for d in r.detections if d.track_id}
            assert len(ids) >= 3, ids
