"""What running a camera frame means (server/frames/work/): decided in one place from the
manifest, and every stage of a frame timed by one rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.frames.types import StageTimes
from server.frames.work.dispatch import FrameWork, frame_work
from server.frames.work.timing import stage_times
from server.manifest import read_manifest
from server.models.version import InferOutcome


def test_each_default_model_runs_its_frames_the_way_its_manifest_says(built_models: Path):
    work = {
        name: frame_work(read_manifest(built_models / name / "1"))
        for name in ("efficientnet_lite0", "ppocr_det", "ppocr", "faces")
    }
    assert work == {
        "efficientnet_lite0": FrameWork.BATCH,  # classification: batched by the scheduler
        "ppocr_det": FrameWork.SINGLE,  # a detector: each frame keeps its own geometry
        "ppocr": FrameWork.PIPELINE,  # detect, then crop
        "faces": FrameWork.CASCADE,  # pyramid, then refine
    }


def _outcome(queue_s: float, infer_s: float, rows: int) -> InferOutcome:
    return InferOutcome(
        {"out": np.zeros(1)}, "1", queue_s=queue_s, infer_s=infer_s, batch_rows=rows
    )


def test_a_stage_counts_waiting_for_the_model_as_queue_not_inference():
    # Two requests of one stage sent together (two pyramid levels, two crop batches): each
    # waited for a runner, then ran 5 ms; 50 ms passed between sending them and the answers.
    outcomes = [_outcome(0.040, 0.005, 4), _outcome(0.030, 0.005, 2)]
    stage = stage_times(outcomes, started=1.000, prepared=1.002, inferred=1.052, done=1.053)
    assert stage.infer_s == pytest.approx(0.010)  # the runs, not the 50 ms of wall time
    assert stage.queue_s == pytest.approx(0.040)  # they waited side by side: the longest wait
    assert stage.preprocess_s == pytest.approx(0.002)
    assert stage.postprocess_s == pytest.approx(0.001)
    assert stage.batch_rows == 4

    frame = StageTimes(preprocess_s=0.003)  # the frame's decode
    frame.add(stage)
    frame.add(stage)  # stages run one after another: their times add up
    assert frame.infer_s == pytest.approx(0.020)
    assert frame.queue_s == pytest.approx(0.080)
    assert frame.preprocess_s == pytest.approx(0.007)
    assert frame.batch_rows == 4
