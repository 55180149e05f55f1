"""YOLO ONNX exports to detections: v5 and v8/v11 layouts, threshold, cap, class-aware NMS,
letterbox inverse."""

from __future__ import annotations

import numpy as np

from server.errors import InvalidInput
from server.manifest import YoloOptions
from server.vision.decoders.nms import nms
from server.vision.detections import Detection, FrameTransform


def rows_of(output: np.ndarray, layout: str, classes: int = 0) -> tuple[np.ndarray, bool]:
    """One image's output as [boxes, 4 (+1) + classes] rows, and whether it has objectness.
    `auto` matches the label count when there are labels, else takes the shorter axis as v8's
    channel axis (exports have thousands of boxes and few classes)."""
    if output.ndim != 2:
        raise InvalidInput(f"yolo output of one image must be 2-D, got shape {list(output.shape)}")
    if layout == "auto":
        if classes and output.shape[0] == 4 + classes:
            layout = "v8"
        elif classes and output.shape[1] == 5 + classes:
            layout = "v5"
        else:
            layout = "v8" if output.shape[0] < output.shape[1] else "v5"
    if layout == "v8":
        return output.T, False
    return output, True


def decode(
    output: np.ndarray,
    options: YoloOptions,
    transform: FrameTransform,
    labels: list[str],
    *,
    score_threshold: float = 0.0,
) -> list[Detection]:
    """Detections of one image; `score_threshold` (per stream) overrides the manifest's when set."""
    rows, objectness = rows_of(np.asarray(output, dtype=np.float32), options.layout, len(labels))
    threshold = score_threshold or options.score_threshold
    first_class = 5 if objectness else 4
    if rows.shape[1] <= first_class:
        raise InvalidInput(f"yolo rows of {rows.shape[1]} values hold no class scores")
    if objectness:
        rows = rows[rows[:, 4] > threshold]  # cheap first cut before touching class scores
        class_scores = rows[:, first_class:] * rows[:, 4:5]
    else:
        class_scores = rows[:, first_class:]
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), class_ids]
    keep = scores > threshold
    rows, class_ids, scores = rows[keep], class_ids[keep], scores[keep]
    if len(scores) > options.max_candidates:  # bounded time whatever the frame holds
        best = np.argpartition(-scores, options.max_candidates - 1)[: options.max_candidates]
        rows, class_ids, scores = rows[best], class_ids[best], scores[best]
    cx, cy, width, height = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = np.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], axis=1)
    kept = nms(boxes, scores, options.iou_threshold, None if options.class_agnostic else class_ids)[
        : options.max_detections
    ]
    x_min, y_min = transform.to_source(boxes[kept, 0], boxes[kept, 1])
    x_max, y_max = transform.to_source(boxes[kept, 2], boxes[kept, 3])
    detections = []
    for index, item in enumerate(kept):
        class_id = int(class_ids[item])
        detections.append(
            Detection(
                x_min=float(x_min[index]),
                y_min=float(y_min[index]),
                x_max=float(x_max[index]),
                y_max=float(y_max[index]),
                score=float(scores[item]),
                class_id=class_id,
                label=labels[class_id] if class_id < len(labels) else str(class_id),
            )  # fmt: skip
        )
    return detections
