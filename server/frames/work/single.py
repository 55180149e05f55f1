"""One camera frame through one model: decode, region of interest, preprocess, infer, and the
postprocess the manifest names (labels, detections in source pixels, or raw tensors).

Detectors run this way (their results map back to the frame's own geometry), each frame
through the model's batcher; frames chosen together still share its batches. CPU-heavy steps
(decode, resize, contour finding, NMS) run in the shared preprocess pool, never on the loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from server.frames.types import EncodedFrame, FrameAnalysis, StreamOptions
from server.frames.work.steps import (
    decode_and_prepare,
    decode_target,
    find_detections,
    frame_preprocess,
)
from server.frames.work.timing import stage_times
from server.manifest import DETECTION_KINDS
from server.models.types import OutputTensor
from server.models.version import ModelVersion
from server.vision.detections import Detection
from server.vision.postprocess import LabelScore, top_k


async def analyze_frame(
    model: ModelVersion, frame: EncodedFrame, options: StreamOptions, pool: Executor
) -> FrameAnalysis:
    spec = frame_preprocess(model.manifest)
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
    # The model's own statistics count this frame when its result is delivered.
    times = stage_times([outcome], started, preprocessed, inferred, loop.time())
    return FrameAnalysis(outcome.version, labels, detections, tensors, times)
