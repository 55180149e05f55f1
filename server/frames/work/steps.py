"""Steps shared by every kind of frame work: decode a frame and cut its region of interest,
prepare a model's input, turn a detector's output into detections in source pixels, and find a
pipeline stage's member. Blocking helpers run in the preprocess pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from server.errors import InvalidInput, ModelLoadError
from server.frames.types import DecodedFrame, EncodedFrame, StageTimes, StreamOptions
from server.manifest import (
    DETECTION_KINDS,
    DbOptions,
    ModelManifest,
    PipelineStage,
    Preprocess,
    YoloOptions,
)
from server.models.version import ModelVersion
from server.vision.decoders import db_text, yolo
from server.vision.detections import Detection, DetectionFilter, FrameTransform, Region
from server.vision.preprocess import (
    MAX_PIXELS,
    FrameEncoding,
    decode_frame,
    to_model_input_with_transform,
)


def frame_preprocess(manifest: ModelManifest) -> Preprocess:
    """The preprocess section camera frames go through. Checked when a stream opens and when a
    version is hot-swapped in; a version without one reaching a stream anyway gets a reason."""
    if manifest.preprocess is None:
        raise InvalidInput(
            f"model {manifest.name} version {manifest.version} has no preprocess section, so it "
            "cannot take camera frames"
        )
    return manifest.preprocess


def decode_with_roi(
    frame: EncodedFrame,
    encoding: FrameEncoding,
    roi: Region | None,
    target: tuple[int, int] | None,
    max_pixels: int = MAX_PIXELS,
) -> DecodedFrame:
    """Decode a frame (JPEG at reduced scale only when `target` allows) and cut the ROI."""
    if not frame.data:
        raise InvalidInput(f"frame {frame.sequence} is empty")
    image, color = decode_frame(
        frame.data, encoding, frame.width, frame.height, target=None if roi else target,
        max_pixels=max_pixels,
    )  # fmt: skip
    if roi is None:
        return DecodedFrame(image, color, image)
    height, width = image.shape[:2]
    x0, y0 = max(0, int(roi.x_min)), max(0, int(roi.y_min))
    x1, y1 = min(width, int(np.ceil(roi.x_max))), min(height, int(np.ceil(roi.y_max)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise InvalidInput(
            f"frame {frame.sequence}: region of interest ({roi.x_min:g}, {roi.y_min:g}, "
            f"{roi.x_max:g}, {roi.y_max:g}) lies outside the {width}x{height} frame"
        )
    return DecodedFrame(image, color, image[y0:y1, x0:x1], x0, y0)


def prepare(decoded: DecodedFrame, spec: Preprocess) -> tuple[np.ndarray, FrameTransform]:
    """The model's input for the frame's view, and the transform back to source pixels."""
    tensor, transform = to_model_input_with_transform(decoded.view, decoded.color, spec)
    return tensor, replace(transform, offset_x=decoded.offset_x, offset_y=decoded.offset_y)


def decode_and_prepare(
    frame: EncodedFrame,
    encoding: FrameEncoding,
    roi: Region | None,
    spec: Preprocess,
    target: tuple[int, int] | None,
    max_pixels: int,
) -> tuple[np.ndarray, FrameTransform]:
    """One hop into the pool for a plain model: decode, cut the ROI, preprocess."""
    return prepare(decode_with_roi(frame, encoding, roi, target, max_pixels), spec)


def find_detections(
    model: ModelVersion, output: np.ndarray, transform: FrameTransform, chosen: DetectionFilter
) -> list[Detection]:
    """One image's detector output (batch row) to filtered detections in source pixels."""
    post = model.manifest.postprocess
    if post.kind == "yolo":
        found = yolo.decode(
            output, post.yolo or YoloOptions(), transform, model.labels,
            score_threshold=chosen.score_threshold,
        )  # fmt: skip
    elif post.kind == "db_text":
        found = db_text.decode(
            output, post.db or DbOptions(), transform, score_threshold=chosen.score_threshold
        )
    else:
        raise InvalidInput(f"model {model.name}: postprocess {post.kind} finds no detections")
    return chosen.apply(found)


def decode_target(spec: Preprocess, kind: str) -> tuple[int, int] | None:
    """A JPEG may decode at reduced scale only when nothing maps back to source pixels and
    the model's size is fixed."""
    if kind in DETECTION_KINDS or spec.resize not in ("stretch", "letterbox"):
        return None
    return spec.height, spec.width


async def decode_source(
    frame: EncodedFrame, options: StreamOptions, pool: Executor, times: StageTimes
) -> DecodedFrame:
    """A pipeline's frame, decoded at full resolution in the pool (crops are cut from the
    source) with its region of interest; the decode counts as the frame's preprocessing."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    decoded = await loop.run_in_executor(
        pool, decode_with_roi, frame, options.encoding, options.detection.roi, None,
        options.max_pixels,
    )  # fmt: skip
    times.preprocess_s += loop.time() - started
    return decoded


def stage_member(pipeline: ModelVersion, stage: PipelineStage) -> ModelVersion:
    """The member serving `stage`, resolved now: a member's hot swap applies from here on."""
    if pipeline.members is None:
        raise ModelLoadError(f"pipeline {pipeline.name} has no member resolver")
    return pipeline.members(stage.model, stage.version)
