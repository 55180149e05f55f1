"""Non-maximum suppression, class-aware by offsetting each class into its own coordinate range.

Two implementations with one contract: OpenCV's `dnn.NMSBoxes` (C++) and a vectorised numpy
loop. `bench/bench_pipeline.py` measures both; `nms` uses OpenCV, the faster one here, where
it is installed (not on the device install: `server.vision.pixels`).
"""

from __future__ import annotations

import numpy as np

from server.vision.pixels import opencv


def _offset(boxes: np.ndarray, class_ids: np.ndarray | None) -> np.ndarray:
    """Shift each class's boxes past every other class's, so NMS never compares classes."""
    if class_ids is None or boxes.size == 0:
        return boxes
    span = float(boxes.max()) + 1.0
    shifted: np.ndarray = boxes + (class_ids.astype(np.float32) * span)[:, None]
    return shifted


def nms_cv2(
    boxes: np.ndarray, scores: np.ndarray, iou: float, class_ids: np.ndarray | None = None
) -> np.ndarray:
    """Indices of kept boxes (xyxy float32), best score first."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    shifted = _offset(boxes, class_ids)
    xywh = np.empty_like(shifted)
    xywh[:, :2] = shifted[:, :2]
    xywh[:, 2:] = shifted[:, 2:] - shifted[:, :2]
    kept = opencv().dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, iou)
    return np.asarray(kept, dtype=np.int64).reshape(-1)


def nms_numpy(
    boxes: np.ndarray, scores: np.ndarray, iou: float, class_ids: np.ndarray | None = None
) -> np.ndarray:
    """Same contract as `nms_cv2`, vectorised over the remaining boxes per kept box."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    shifted = _offset(boxes, class_ids)
    x1, y1, x2, y2 = shifted.T
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    while order.size:
        best = int(order[0])
        kept.append(best)
        rest = order[1:]
        width = np.maximum(0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        height = np.maximum(0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        inter = width * height
        union = areas[best] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(kept, dtype=np.int64)


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou: float, class_ids: np.ndarray | None = None
) -> np.ndarray:
    """`nms_cv2` where OpenCV is installed, else `nms_numpy`."""
    chosen = nms_cv2 if opencv() is not None else nms_numpy
    return chosen(boxes, scores, iou, class_ids)
