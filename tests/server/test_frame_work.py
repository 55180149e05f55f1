"""What running a camera frame means (server/frames/work/): decided in one place from the
manifest, and every stage of a frame timed by one rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.frames.types import StageTimes
from server.frames.work.dispatch import FrameWork, frame_work
from server.frames.work.timing import frame_timings, stage_times
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


def _outcome(run: tuple[float, float], requests: int) -> InferOutcome:
    return InferOutcome(
        {"out": np.zeros(1)}, "1", queue_s=0.0, infer_s=run[1] - run[0], batch_rows=64,
        batch_requests=requests, runs=(run,),
    )  # fmt: skip


def test_a_stage_counts_waiting_for_the_model_as_queue_not_inference():
    # Two requests of one stage sent together (two pyramid levels, two crop batches) at 1.002:
    # the first ran 5 ms from 1.040 (it waited behind other work), the second right after it.
    outcomes = [_outcome((1.040, 1.045), 3), _outcome((1.047, 1.052), 1)]
    stage = stage_times(outcomes, started=1.000, prepared=1.002, inferred=1.052, done=1.053)
    assert stage.infer_s == pytest.approx(0.010)  # the runs, not the 50 ms of wall time
    assert stage.queue_s == pytest.approx(0.040)  # the rest of the 50 ms was waiting
    assert stage.preprocess_s == pytest.approx(0.002)
    assert stage.postprocess_s == pytest.approx(0.001)
    # Frames that shared a run, not rows: the 64-row batches held 3 frames' requests at most.
    assert stage.batch_size == 3

    frame = StageTimes(preprocess_s=0.003)  # the frame's decode
    frame.add(stage)
    frame.add(stage)  # stages run one after another: their times add up
    assert frame.infer_s == pytest.approx(0.020)
    assert frame.queue_s == pytest.approx(0.080)
    assert frame.preprocess_s == pytest.approx(0.007)
    assert frame.batch_size == 3


def test_runs_side_by_side_on_two_runners_count_once():
    outcomes = [_outcome((1.010, 1.050), 1), _outcome((1.020, 1.052), 1)]
    stage = stage_times(outcomes, started=1.000, prepared=1.000, inferred=1.052, done=1.052)
    assert stage.infer_s == pytest.approx(0.042)
    assert stage.queue_s == pytest.approx(0.010)


def test_a_frames_figures_add_up_to_its_total_and_the_rest_is_queue():
    times = StageTimes(
        queue_s=0.001, preprocess_s=0.0123456, infer_s=0.0201119, postprocess_s=0.0019999,
        batch_size=2,
    )  # fmt: skip
    # It arrived at 10.0 and waited in its stream's slot before any of that work began.
    timings = frame_timings(times, arrival=10.0, done=10.1)
    assert timings.total_us == pytest.approx(100_000, abs=1)
    parts = timings.queue_us + timings.preprocess_us + timings.inference_us
    assert parts + timings.postprocess_us == timings.total_us
    assert timings.inference_us == 20111
    assert timings.queue_us > 60_000  # the slot, not only the member's queue
    assert timings.batch_size == 2
