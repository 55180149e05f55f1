"""One camera frame through one model: decode, region of interest, preprocess, infer, and the
postprocess the manifest names (labels, detections in source pixels, or raw tensors).

FrameScheduler decides *when* a frame runs (freshness, fairness, leases, batching); this
module decides *what* running it means, so a pipeline (server/frames/work/pipeline.py) is one
more kind of frame work and the scheduler does not change. CPU-heavy steps (decode, resize,
contour finding, NMS, crops) run in the shared preprocess pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from server.errors import InvalidInput
from server.frames.types import (
    DecodedFrame,
    EncodedFrame,
    FrameAnalysis,
    StageTimes,
    StreamOptions,
)
from server.manifest import DETECTION_KINDS, DbOptions, Preprocess, YoloOptions
from server.models.types import OutputTensor
from server.models.version import ModelVersion
from server.vision.decoders import db_text, yolo
from server.vision.detections import Detection, DetectionFilter, FrameTransform, Region
from server.vision.postprocess import LabelScore, top_k
from server.vision.preprocess import (
    MAX_PIXELS,
    FrameEncoding,
    decode_frame,
    to_model_input_with_transform,
)


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


async def analyze_frame(
    model: ModelVersion, frame: EncodedFrame, options: StreamOptions, pool: Executor
) -> FrameAnalysis:
    spec = model.manifest.preprocess
    assert spec is not None  # checked when the stream opened
    post = model.manifest.postprocess
    loop = asyncio.get_running_loop()
    started = loop.time()
    tensor, transform = await loop.run_in_executor(
        pool, decode_and_prepare, frame, options.encoding, options.detection.roi, spec,
        decode_target(spec, post.kind), options.max_pixels,
    )  # fmt: skip
    preprocessed = loop.time()
    outcome = await model.infer({spec.input: tensor})
    inferred = loop.time()
    labels: list[LabelScore] = []
    detections: list[Detection] = []
    if post.kind == "classification" and post.output:
        k = options.top_k or post.top_k
        labels = top_k(outcome.outputs[post.output], k, model.labels, apply_softmax=post.softmax)[0]
    elif post.kind in DETECTION_KINDS and post.output:
        detections = await loop.run_in_executor(
            pool, find_detections, model, outcome.outputs[post.output][0], transform,
            options.detection,
        )  # fmt: skip
    tensors = (
        [OutputTensor(name, value[0]) for name, value in outcome.outputs.items()]
        if options.raw_tensors
        else []
    )
    done = loop.time()
    times = StageTimes(
        queue_s=outcome.queue_s, preprocess_s=preprocessed - started, infer_s=outcome.infer_s,
        postprocess_s=done - inferred, batch_rows=outcome.batch_rows,
    )  # fmt: skip
    return FrameAnalysis(outcome.version, labels, detections, tensors, times)
