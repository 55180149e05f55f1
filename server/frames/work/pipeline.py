"""Pipelines: a detector, then per-detection crops batched into further models, in one frame.

A pipeline version (manifest format `pipeline`) names its member models by name and optional
version; they are resolved from the registry at every frame, so a member's hot swap applies to
the next frame and the version that served each stage holds a lease while it works.

Stages (server.manifest.PipelineStage):
- `detect`: the member sees the frame's region of interest through its own preprocess (fixed,
  letterboxed or frame-sized) and its postprocess (yolo, db_text) yields detections in source
  pixels.
- `crop`: every detection is cut from the full-resolution source frame (box, or quadrilateral
  with perspective correction; tall crops turned upright), crops of zero area are skipped, the
  rest are sorted by aspect ratio and sent as batches of the member's max batch size, each
  prepared when its turn comes, one at a time (CROP_BATCHES_IN_FLIGHT), so a page of hundreds
  of lines never floods its queue or memory and other frames' batches interleave with its
  own; its postprocess fills each detection
  (ctc_text: text and score; classification: class, label and score) and detections under the
  stage's `min_score` are dropped. Past the pipeline's `budget.max_crops` only the best-scored
  detections are read and the frame is answered with those (truncated).
A frame's parts run all or nothing (server/concurrency.py): when one fails, or the frame is
cancelled (its stream closed, shutdown), every other part is cancelled with it. Each unit (the
detector run, each crop batch) first waits for the frame's turn (`UnitTurn`): a frame of a
stream past its share of the device yields to the others' frames between its units.
A pipeline whose first stage is `pyramid` is a cascade (MTCNN's P-, R- and O-Net), run by
server/frames/work/cascade.py instead (server/frames/work/dispatch.py decides). Whatever the
stages, the frame stays one unit of work for the scheduler.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Hashable
from concurrent.futures import Executor
from dataclasses import replace
from functools import partial

import numpy as np

from server.concurrency import bounded_all_or_nothing
from server.frames.types import (
    DecodedFrame,
    EncodedFrame,
    FrameAnalysis,
    StageTimes,
    StreamOptions,
    UnitTurn,
)
from server.frames.work.steps import decode_source, find_detections, prepare, stage_member
from server.frames.work.timing import book_member_stage
from server.manifest import PipelineStage
from server.models.version import InferOutcome, ModelVersion
from server.vision import pixels
from server.vision.decoders.ctc_text import decode as ctc_decode
from server.vision.detections import Detection
from server.vision.postprocess import top_k
from server.vision.preprocess import crops_to_batch

# Crop batches of one frame prepared or queued at a member at once. One: a page of hundreds of
# lines never floods the member's queue (it was dropped as overloaded past 768 lines), other
# frames' batches interleave with its own instead of waiting behind all of them, and a
# frame's preparing and runs never overlap, so its timings add up.
CROP_BATCHES_IN_FLIGHT = 1
# Crops at least this much taller than wide are turned upright (PaddleOCR's rule).
TALL_RATIO = 1.5


def cut_crop(image: np.ndarray, item: Detection, stage: PipelineStage) -> np.ndarray | None:
    """The detection's pixels from the source frame, or None when it has no area."""
    if stage.crop == "quad" and len(item.polygon) == 4:
        corners = np.asarray(item.polygon, dtype=np.float32)
        width = int(max(np.linalg.norm(corners[0] - corners[1]),
                        np.linalg.norm(corners[2] - corners[3])))  # fmt: skip
        height = int(max(np.linalg.norm(corners[0] - corners[3]),
                         np.linalg.norm(corners[1] - corners[2])))  # fmt: skip
        if width < 1 or height < 1:
            return None
        crop = pixels.warp_quad(image, corners, width, height)
    else:
        height_px, width_px = image.shape[:2]
        x0, y0 = max(0, math.floor(item.x_min)), max(0, math.floor(item.y_min))
        x1, y1 = min(width_px, math.ceil(item.x_max)), min(height_px, math.ceil(item.y_max))
        if x1 <= x0 or y1 <= y0:
            return None
        crop = image[y0:y1, x0:x1]
    if stage.rotate_tall and crop.shape[0] >= TALL_RATIO * crop.shape[1]:
        crop = np.rot90(crop)
    return crop


def _cut_all(
    image: np.ndarray, detections: list[Detection], stage: PipelineStage
) -> list[tuple[int, np.ndarray]]:
    crops = [(index, cut_crop(image, item, stage)) for index, item in enumerate(detections)]
    kept = [(index, crop) for index, crop in crops if crop is not None]
    # Similar aspect ratios share a batch, so padding wastes little (PaddleOCR sorts the same).
    kept.sort(key=lambda pair: pair[1].shape[1] / pair[1].shape[0])
    return kept


async def _detect(
    member: ModelVersion, decoded: DecodedFrame, options: StreamOptions, pool: Executor,
    times: StageTimes, frame: Hashable, turn: UnitTurn,
) -> list[Detection]:  # fmt: skip
    loop = asyncio.get_running_loop()
    spec = member.manifest.preprocess
    post = member.manifest.postprocess
    assert spec is not None and post.output  # checked when the pipeline loaded
    await turn.wait()
    started = loop.time()
    tensor, transform = await loop.run_in_executor(pool, prepare, decoded, spec)
    prepared = loop.time()
    outcome = await member.infer({spec.input: tensor}, group=frame)
    inferred = loop.time()
    found = await loop.run_in_executor(
        pool, find_detections, member, outcome.outputs[post.output][0], transform,
        options.detection,
    )  # fmt: skip
    book_member_stage(member, times, [outcome], started, prepared, inferred, loop.time())
    return found


async def _crop_stage(
    member: ModelVersion, stage: PipelineStage, decoded: DecodedFrame,
    detections: list[Detection], pool: Executor, times: StageTimes, frame: Hashable,
    turn: UnitTurn,
) -> list[Detection]:  # fmt: skip
    loop = asyncio.get_running_loop()
    spec = member.manifest.preprocess
    post = member.manifest.postprocess
    assert spec is not None and post.output  # checked when the pipeline loaded
    started = loop.time()
    crops = await loop.run_in_executor(pool, _cut_all, decoded.image, detections, stage)
    if not crops:
        return detections
    cut_s = loop.time() - started
    chunk = max(member.plan.max_batch_size, 1)
    groups = [crops[start : start + chunk] for start in range(0, len(crops), chunk)]
    preparing: list[float] = []

    async def read(group: list[tuple[int, np.ndarray]]) -> InferOutcome:
        # Each batch is prepared only when its turn comes: a page's crops never sit in memory
        # as tensors all at once (a page of 880 lines took RSS +958 MB that way).
        await turn.wait()
        began = loop.time()
        tensor = await loop.run_in_executor(
            pool, crops_to_batch, [crop for _, crop in group], decoded.color, spec
        )
        preparing.append(loop.time() - began)
        return await member.infer({spec.input: tensor}, group=frame)

    outcomes = await bounded_all_or_nothing(
        [partial(read, group) for group in groups], CROP_BATCHES_IN_FLIGHT
    )
    inferred = loop.time()
    prepare_s = min(cut_s + sum(preparing), inferred - started)
    updated = list(detections)
    for group, outcome in zip(groups, outcomes, strict=True):
        output = outcome.outputs[post.output]
        if post.kind == "ctc_text":
            for (index, _), (text, score) in zip(
                group, ctc_decode(output, member.labels), strict=True
            ):
                updated[index] = replace(updated[index], text=text, score=score)
        else:
            best = top_k(output, 1, member.labels, apply_softmax=post.softmax)
            for (index, _), (choice,) in zip(group, best, strict=True):
                updated[index] = replace(
                    updated[index], class_id=choice.class_id, label=choice.label,
                    score=choice.score,
                )  # fmt: skip
    book_member_stage(member, times, outcomes, started, started, inferred, loop.time(), prepare_s)
    return [item for item in updated if item.score >= stage.min_score]


async def run_pipeline(
    pipeline: ModelVersion, frame: EncodedFrame, options: StreamOptions, pool: Executor,
    turn: UnitTurn,
) -> FrameAnalysis:  # fmt: skip
    """Detect, then crop stages, each on the member the registry serves now, each unit in
    the frame's `turn`."""
    spec = pipeline.manifest.pipeline
    assert spec is not None
    times = StageTimes()
    decoded = await decode_source(frame, options, pool, times)
    detections: list[Detection] = []
    key = object()  # its requests to the members count as one in the batches they share
    truncated = False
    for stage in spec.stages:
        member = stage_member(pipeline, stage)
        with member.lease():
            if stage.kind == "detect":
                detections = await _detect(member, decoded, options, pool, times, key, turn)
            else:
                detections, cut = within_budget(detections, spec.budget.max_crops)
                truncated = truncated or cut
                detections = await _crop_stage(
                    member, stage, decoded, detections, pool, times, key, turn
                )
    return FrameAnalysis(pipeline.version, detections=detections, times=times, truncated=truncated)


def within_budget(detections: list[Detection], max_crops: int) -> tuple[list[Detection], bool]:
    """The detections a crop stage may read (best scores first) and whether any were cut."""
    if max_crops <= 0 or len(detections) <= max_crops:
        return detections, False
    return sorted(detections, key=lambda item: item.score, reverse=True)[:max_crops], True
