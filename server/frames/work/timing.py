"""A frame's stage timings, booked one way for every kind of frame work.

A stage prepares its input in the pool (`started` to `prepared`), waits for and runs its model
(`prepared` to `inferred`), and reads the outputs (`inferred` to `done`). Of the middle part only
what the batcher reports as runs is inference; the rest was waiting, so it is queue time. The
requests a stage sends together (pyramid levels, crop batches) wait side by side, so the stage
waited as long as the longest of them; their runs are the model's work, so those add up.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.frames.types import StageTimes
from server.models.version import InferOutcome, ModelVersion


def stage_times(
    outcomes: Sequence[InferOutcome], started: float, prepared: float, inferred: float, done: float
) -> StageTimes:
    """One stage's times, from loop times around it and its requests' outcomes."""
    return StageTimes(
        queue_s=max(item.queue_s for item in outcomes),
        preprocess_s=prepared - started,
        infer_s=sum(item.infer_s for item in outcomes),
        postprocess_s=done - inferred,
        batch_rows=max(item.batch_rows for item in outcomes),
    )


def book_member_stage(
    member: ModelVersion,
    times: StageTimes,
    outcomes: Sequence[InferOutcome],
    started: float,
    prepared: float,
    inferred: float,
    done: float,
) -> None:
    """A pipeline member ran one stage of a frame: count it in the member's own statistics and
    add it to the frame's times."""
    stage = stage_times(outcomes, started, prepared, inferred, done)
    member.record_success(
        total_s=done - started, queue_s=stage.queue_s, input_s=stage.preprocess_s,
        infer_s=stage.infer_s, output_s=stage.postprocess_s,
    )  # fmt: skip
    times.add(stage)
