"""A batch of camera frames decoded, run and post-processed in one hop to the model's thread.

The freshness scheduler chooses the frames on the event loop; everything that touches pixels
or tensors happens here, on the model's runner: decode (and region of interest), preprocess,
one model run for all frames that decoded, top-k per row. One executor hop per batch instead
of a hop to the decode pool, a queue to the batcher and a hop to the model: fewer event-loop
wake-ups per frame and no Python work per frame on the loop beyond the result message
(docs/benchmarks.md, "Server CPU per frame"). The event loop keeps serving the network while
the runner works, and a frame is decoded only once it is chosen to run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from server.frames.types import BatchFrame, StageTimes
from server.frames.work.steps import decode_and_prepare, decode_target, frame_preprocess
from server.manifest import ModelManifest
from server.models.backends.base import Backend
from server.models.types import Arrays, OutputTensor
from server.vision.postprocess import LabelScore, top_k


@dataclass
class FrameOutput:
    """What became of one frame: a decode failure, stale before it started, or its result."""

    failure: BaseException | None = None
    stale: bool = False
    labels: list[LabelScore] = field(default_factory=list)
    tensors: list[OutputTensor] = field(default_factory=list)


@dataclass
class FrameBatchRun:
    outputs: list[FrameOutput]
    # Shared by every frame of the batch: queue_s from submission to the runner starting the
    # job, preprocess_s the decodes, batch_size the frames that ran in the model (0: none did).
    times: StageTimes


class FrameBatchJob:
    """Callable on the model's runner thread (`ModelVersion.run_job`)."""

    def __init__(
        self,
        manifest: ModelManifest,
        labels: list[str],
        output_names: list[str],
        batching: bool,
        frames: list[BatchFrame],
    ) -> None:
        self._manifest = manifest
        self._labels = labels
        self._output_names = output_names
        self._batching = batching
        self._frames = frames
        self._submitted = time.monotonic()

    def __call__(self, backend: Backend) -> FrameBatchRun:
        started = time.monotonic()
        spec = frame_preprocess(self._manifest)
        target = decode_target(spec, self._manifest.postprocess.kind)
        outputs = [FrameOutput() for _ in self._frames]
        tensors: list[np.ndarray] = []
        rows: list[int] = []
        for index, item in enumerate(self._frames):
            if item.stale_after is not None and started > item.stale_after:
                outputs[index].stale = True
                continue
            options = item.options
            try:
                tensor, _transform = decode_and_prepare(
                    item.frame, options.encoding, options.detection.roi, spec, target,
                    options.max_pixels,
                )  # fmt: skip
            except Exception as exc:  # reported per frame by the scheduler
                outputs[index].failure = exc
                continue
            tensors.append(tensor)
            rows.append(index)
        decoded = time.monotonic()
        times = StageTimes(queue_s=started - self._submitted, preprocess_s=decoded - started)
        if not tensors:
            return FrameBatchRun(outputs, times)
        batch = tensors[0] if len(tensors) == 1 else np.concatenate(tensors)
        results = backend.run({spec.input: batch}, self._output_names)
        inferred = time.monotonic()
        self._postprocess(results, rows, outputs)
        times.infer_s = inferred - decoded
        times.postprocess_s = time.monotonic() - inferred
        times.batch_size = len(rows)
        return FrameBatchRun(outputs, times)

    def _postprocess(self, results: Arrays, rows: list[int], outputs: list[FrameOutput]) -> None:
        post = self._manifest.postprocess
        for row, index in enumerate(rows):
            options = self._frames[index].options
            own = (
                {name: value[row : row + 1] for name, value in results.items()}
                if self._batching
                else results
            )
            if post.kind == "classification" and post.output:
                k = options.top_k or post.top_k
                outputs[index].labels = top_k(
                    own[post.output], k, self._labels, apply_softmax=post.softmax
                )[0]
            if options.raw_tensors:
                outputs[index].tensors = [
                    OutputTensor(name, value[0]) for name, value in own.items()
                ]
