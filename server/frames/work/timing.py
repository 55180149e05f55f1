"""A frame's timings, booked one way for every kind of frame work and assembled in one place.

A stage prepares its input in the pool (`started` to `prepared`), waits for and runs its model
(`prepared` to `inferred`), and reads the outputs (`inferred` to `done`). Of the middle part,
inference is the time some run of the stage's requests was going on (the union of their runs:
pyramid levels or crop batches that run one after another add up, runs side by side on two
runners count once); the rest was waiting, so it is queue time. A frame's figures are then
assembled by `frame_timings` alone: its work phases, and queue as everything else between its
arrival and its result, so the parts add up to the total by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.frames.types import FrameTimings, StageTimes
from server.models.version import InferOutcome, ModelVersion


def _covered(runs: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] during which at least one of `runs` was going on."""
    total, reached = 0.0, start
    for run_start, run_end in sorted(runs):
        low, high = max(run_start, reached), min(run_end, end)
        if high > low:
            total += high - low
            reached = high
    return total


def stage_times(
    outcomes: Sequence[InferOutcome],
    started: float,
    prepared: float,
    inferred: float,
    done: float,
    prepare_s: float | None = None,
) -> StageTimes:
    """One stage's times, from loop times around it and its requests' outcomes. A stage that
    prepares its batches one by one between its runs (a crop stage) passes the seconds it
    spent preparing as `prepare_s`: its runs then count from `started`."""
    runs = [run for item in outcomes for run in item.runs]
    if prepare_s is None:
        prepare_s = prepared - started
        infer_s = _covered(runs, prepared, inferred)
    else:
        infer_s = _covered(runs, started, inferred)
    return StageTimes(
        queue_s=max(0.0, inferred - started - prepare_s - infer_s),
        preprocess_s=prepare_s,
        infer_s=infer_s,
        postprocess_s=done - inferred,
        batch_size=max(item.batch_requests for item in outcomes),
    )


def book_member_stage(
    member: ModelVersion,
    times: StageTimes,
    outcomes: Sequence[InferOutcome],
    started: float,
    prepared: float,
    inferred: float,
    done: float,
    prepare_s: float | None = None,
) -> None:
    """A pipeline member ran one stage of a frame: count it in the member's own statistics and
    add it to the frame's times (`prepare_s`: as `stage_times`)."""
    stage = stage_times(outcomes, started, prepared, inferred, done, prepare_s)
    member.record_success(
        total_s=done - started, queue_s=stage.queue_s, input_s=stage.preprocess_s,
        infer_s=stage.infer_s, output_s=stage.postprocess_s,
    )  # fmt: skip
    times.add(stage)


def frame_timings(times: StageTimes, arrival: float, done: float) -> FrameTimings:
    """The one place a frame's figures are assembled. Its work phases are disjoint parts of
    its time on the server (`arrival` to `done`, loop times); whatever else passed, waiting in
    its stream's slot, for a batch, for a runner or between stages, is queue."""
    total_us = max(0, int((done - arrival) * 1e6))
    preprocess_us = int(times.preprocess_s * 1e6)
    inference_us = int(times.infer_s * 1e6)
    postprocess_us = int(times.postprocess_s * 1e6)
    return FrameTimings(
        queue_us=max(0, total_us - preprocess_us - inference_us - postprocess_us),
        preprocess_us=preprocess_us,
        inference_us=inference_us,
        postprocess_us=postprocess_us,
        total_us=total_us,
        batch_size=times.batch_size,
    )
