"""How a camera frame of a model runs: decided here, once, from the model's manifest.

- BATCH: one model, whole-frame input, nothing to map back to source pixels (classification,
  raw tensors). The scheduler takes frames of several streams at once and decodes, runs and
  post-processes them in one hop on the model's runner (batch.py).
- SINGLE: one model whose results map back to the frame's own geometry (the yolo and db_text
  detectors): each frame is decoded in the pool and goes through the model's batcher on its
  own (single.py); frames chosen together still share the batcher's batches.
- PIPELINE: a detect stage, then crop stages over further models (pipeline.py).
- CASCADE: a pyramid stage, then refine stages (MTCNN; cascade.py).
The scheduler decides *when* frames run; this module decides *what* running one means.
"""

from __future__ import annotations

from concurrent.futures import Executor
from enum import Enum

from server.frames.types import EncodedFrame, FrameAnalysis, StreamOptions, UnitTurn
from server.frames.work.cascade import run_cascade
from server.frames.work.pipeline import run_pipeline
from server.frames.work.single import analyze_frame
from server.manifest import DETECTION_KINDS, ModelManifest
from server.models.version import ModelVersion


class FrameWork(Enum):
    BATCH = "batch"
    SINGLE = "single"
    PIPELINE = "pipeline"
    CASCADE = "cascade"


def frame_work(manifest: ModelManifest) -> FrameWork:
    """What running one frame of this model means."""
    if manifest.pipeline is not None:
        first = manifest.pipeline.stages[0].kind
        return FrameWork.CASCADE if first == "pyramid" else FrameWork.PIPELINE
    if manifest.postprocess.kind in DETECTION_KINDS:
        return FrameWork.SINGLE
    return FrameWork.BATCH


async def run_frame(
    model: ModelVersion, frame: EncodedFrame, options: StreamOptions, pool: Executor,
    turn: UnitTurn,
) -> FrameAnalysis:  # fmt: skip
    """One frame on its own (the scheduler runs BATCH frames several at once, in batch.py);
    a pipeline's or cascade's units each wait for the frame's `turn` (a single model's frame is
    one unit: the scheduler's order at its start is all there is)."""
    work = frame_work(model.manifest)
    if work is FrameWork.PIPELINE:
        return await run_pipeline(model, frame, options, pool, turn)
    if work is FrameWork.CASCADE:
        return await run_cascade(model, frame, options, pool, turn)
    return await analyze_frame(model, frame, options, pool)
