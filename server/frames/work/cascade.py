"""Cascade pipelines (MTCNN): a `pyramid` stage, then `refine` stages, over one frame.

The pipeline's first stage runs a fully convolutional proposal network (P-Net) over an image
pyramid of the frame: every level goes to the member's batcher at once (levels of the same size
from several cameras share a batch). Each `refine` stage cuts the surviving candidates square
from the frame at the member's input size and sends them as batches of the member's max batch
size, all at once (R-Net on 24x24, O-Net on 48x48). Thresholds, NMS and the pyramid's
minimum size and scale step come from the manifest's stages; the numpy between the networks is
server/vision/mtcnn.py and runs in the preprocess pool, never on the event loop. The frame stays
one unit of work for the scheduler, whatever its stages, and its parts run all or nothing (a
failed or cancelled frame cancels its other levels and batches). A region larger than the
pipeline's `budget.max_side` is scaled down to it first and the frame answered with what the
cascade finds there (truncated). Each stage first waits for the frame's turn (`UnitTurn`): a frame
of a stream past its share of the device yields to the others' frames between its stages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from concurrent.futures import Executor

import numpy as np

from server.concurrency import all_or_nothing
from server.frames.types import (
    DecodedFrame,
    EncodedFrame,
    FrameAnalysis,
    StageTimes,
    StreamOptions,
    UnitTurn,
)
from server.frames.work.steps import decode_source, stage_member
from server.frames.work.timing import book_member_stage
from server.manifest import CascadeStage, PipelineStage
from server.models.version import ModelVersion
from server.vision import mtcnn, pixels
from server.vision.detections import Detection, Keypoint


def _options(first: CascadeStage) -> mtcnn.CascadeOptions:
    return mtcnn.CascadeOptions(
        min_face_size=first.min_size,
        scale_factor=first.scale_factor,
        thresholds=(first.threshold, 0.0, 0.0),
        nms_level=first.level_nms_iou,
        nms_pnet=first.nms_iou,
        max_rnet_candidates=first.max_candidates,
    )


async def _pyramid(
    member: ModelVersion, stage: CascadeStage, view: np.ndarray, color: str, pool: Executor,
    times: StageTimes, frame: Hashable,
) -> mtcnn.Candidates:  # fmt: skip
    loop = asyncio.get_running_loop()
    options = _options(stage)
    started = loop.time()
    levels = await loop.run_in_executor(pool, mtcnn.pyramid, view, options, color)
    if not levels:  # smaller than one window
        return mtcnn.empty_candidates()
    prepared = loop.time()
    name = member.manifest.inputs[0].name
    outcomes = await all_or_nothing(
        *(member.infer({name: level.input}, group=frame) for level in levels)
    )
    inferred = loop.time()
    outputs = [(item.outputs[stage.score_output], item.outputs[stage.offsets_output])
               for item in outcomes]  # fmt: skip
    height, width = view.shape[:2]

    def propose() -> mtcnn.Candidates:
        return mtcnn.visible(mtcnn.proposals(levels, outputs, options), height, width)

    candidates = await loop.run_in_executor(pool, propose)
    book_member_stage(member, times, outcomes, started, prepared, inferred, loop.time())
    return candidates


async def _refine(
    member: ModelVersion, stage: CascadeStage, last: bool, view: np.ndarray, color: str,
    candidates: mtcnn.Candidates, pool: Executor, times: StageTimes, frame: Hashable,
) -> mtcnn.Candidates | mtcnn.Faces:  # fmt: skip
    loop = asyncio.get_running_loop()
    started = loop.time()
    spec = member.manifest.inputs[0]
    size = int(spec.shape[2])
    batch = await loop.run_in_executor(pool, mtcnn.crops, view, candidates, size, color)
    prepared = loop.time()
    chunk = max(member.plan.max_batch_size, 1)
    outcomes = await all_or_nothing(
        *(
            member.infer({spec.name: batch[start : start + chunk]}, group=frame)
            for start in range(0, len(batch), chunk)
        )
    )
    inferred = loop.time()

    def joined(name: str) -> np.ndarray:
        return np.concatenate([item.outputs[name] for item in outcomes])

    prob, reg = joined(stage.score_output), joined(stage.offsets_output)
    height, width = view.shape[:2]
    if last:
        has_points = stage.keypoints_output in outcomes[0].outputs
        points = joined(stage.keypoints_output) if has_points else None
        result: mtcnn.Candidates | mtcnn.Faces = await loop.run_in_executor(
            pool, mtcnn.finish, candidates, prob, reg, points, stage.threshold, stage.nms_iou,
            stage.nms_over, height, width,
        )  # fmt: skip
    else:

        def refined() -> mtcnn.Candidates:
            kept = mtcnn.refine(
                candidates, prob, reg, stage.threshold, stage.nms_iou, stage.max_candidates
            )
            return mtcnn.visible(kept, height, width)

        result = await loop.run_in_executor(pool, refined)
    book_member_stage(member, times, outcomes, started, prepared, inferred, loop.time())
    return result


def _detections(
    faces: mtcnn.Faces, first: CascadeStage, last: CascadeStage, offset_x: int, offset_y: int,
    scale: float = 1.0,
) -> list[Detection]:  # fmt: skip
    """Faces found on the (possibly reduced) view, in source pixels."""
    names = last.keypoint_names
    result = []
    for box, score, points in zip(faces.boxes, faces.scores, faces.landmarks, strict=True):
        keypoints = tuple(
            Keypoint(
                x=float(x) * scale + offset_x,
                y=float(y) * scale + offset_y,
                name=names[index] if index < len(names) else "",
            )  # fmt: skip
            for index, (x, y) in enumerate(points)
        )
        result.append(
            Detection(
                x_min=float(box[0]) * scale + offset_x,
                y_min=float(box[1]) * scale + offset_y,
                x_max=float(box[2]) * scale + offset_x,
                y_max=float(box[3]) * scale + offset_y,
                score=float(score),
                label=first.label,
                keypoints=keypoints,
            )  # fmt: skip
        )
    return result


async def run_cascade(
    pipeline: ModelVersion, frame: EncodedFrame, options: StreamOptions, pool: Executor,
    turn: UnitTurn,
) -> FrameAnalysis:  # fmt: skip
    """Every stage on the frame's region of interest; detections in source pixels, best first.
    Members are resolved stage by stage (a hot swap applies from the next stage on); a stage
    that leaves no candidate ends the frame early."""
    spec = pipeline.manifest.pipeline
    assert spec is not None
    times = StageTimes()
    decoded = await decode_source(frame, options, pool, times)
    view, scale = decoded.view, 1.0
    max_side = spec.budget.max_side
    if max_side > 0 and max(view.shape[:2]) > max_side:
        loop = asyncio.get_running_loop()
        started = loop.time()
        view, scale = await loop.run_in_executor(pool, reduced, view, max_side)
        times.preprocess_s += loop.time() - started
    detections = await _run_stages(
        pipeline, spec.stages, decoded, view, scale, options, pool, times, turn
    )
    return FrameAnalysis(
        pipeline.version, detections=detections, times=times, truncated=scale != 1.0
    )


def reduced(view: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The view scaled down to `max_side` on its longer side (the pipeline's per-frame work
    budget), and the factor back to the view's pixels."""
    height, width = view.shape[:2]
    scale = max(height, width) / max_side
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    # pixels.scale: OpenCV where it is installed, Pillow on a device install without it.
    return pixels.scale(view, size[0], size[1], area=True), scale


async def _run_stages(
    pipeline: ModelVersion,
    stages: list[PipelineStage],
    decoded: DecodedFrame,
    view: np.ndarray,
    scale: float,
    options: StreamOptions,
    pool: Executor,
    times: StageTimes,
    turn: UnitTurn,
) -> list[Detection]:
    """`view`: the region of interest, reduced by `scale` when over the work budget."""
    color = decoded.color
    first = stages[0].cascade
    frame = object()  # its requests to the members count as one in the batches they share
    await turn.wait()
    with stage_member(pipeline, stages[0]).lease() as proposer:
        found: mtcnn.Candidates | mtcnn.Faces = await _pyramid(
            proposer, first, view, color, pool, times, frame
        )
    for index, stage in enumerate(stages[1:], start=1):
        if not len(found):
            return []
        assert isinstance(found, mtcnn.Candidates)
        last = index == len(stages) - 1
        await turn.wait()
        with stage_member(pipeline, stage).lease() as refiner:
            found = await _refine(
                refiner, stage.cascade, last, view, color, found, pool, times, frame
            )
    if isinstance(found, mtcnn.Candidates):  # a pyramid alone: its square windows
        found = mtcnn.Faces(found.boxes, found.scores, np.zeros((len(found), 0, 2), np.float32))
    detections = _detections(
        found, first, stages[-1].cascade, decoded.offset_x, decoded.offset_y, scale
    )
    detections.sort(key=lambda item: item.score, reverse=True)
    return options.detection.apply(detections)
