"""PP-OCR's differentiable-binarisation text detector: probability map -> text quadrilaterals.

A port of PaddleOCR's DBPostProcess ("fast" box score): threshold the map, find contours, fit
minimum-area rectangles, score each by the mean probability inside it, grow ("unclip") it by
area * unclip_ratio / perimeter with pyclipper, as PaddleOCR does, and map it to source pixels.

OpenCV and pyclipper come with the `ocr` extra; a db_text model is refused before it loads
where they are missing (`server.models.extras`), so nothing here runs without them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import numpy as np

from server.errors import InvalidInput
from server.manifest import DbOptions
from server.vision.detections import Detection, FrameTransform
from server.vision.pixels import opencv

pyclipper: Any = (
    importlib.import_module("pyclipper") if importlib.util.find_spec("pyclipper") else None
)

_DILATION = np.ones((2, 2), dtype=np.uint8)


def _mini_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The minimum-area rectangle's corners clockwise from top-left, and its shorter side."""
    cv2 = opencv()
    rect = cv2.minAreaRect(points)
    corners = sorted(cv2.boxPoints(rect).tolist(), key=lambda point: point[0])
    left = sorted(corners[:2], key=lambda point: point[1])
    right = sorted(corners[2:], key=lambda point: point[1])
    box = np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)
    return box, float(min(rect[1]))


def _box_score(prob: np.ndarray, box: np.ndarray) -> float:
    height, width = prob.shape
    x_min = int(np.clip(np.floor(box[:, 0].min()), 0, width - 1))
    x_max = int(np.clip(np.ceil(box[:, 0].max()), 0, width - 1))
    y_min = int(np.clip(np.floor(box[:, 1].min()), 0, height - 1))
    y_max = int(np.clip(np.ceil(box[:, 1].max()), 0, height - 1))
    mask = np.zeros((y_max - y_min + 1, x_max - x_min + 1), dtype=np.uint8)
    shifted = (box - np.array([x_min, y_min], dtype=np.float32)).astype(np.int32)
    cv2 = opencv()
    cv2.fillPoly(mask, [shifted.reshape(-1, 1, 2)], 1)
    return float(cv2.mean(prob[y_min : y_max + 1, x_min : x_max + 1], mask)[0])


def _unclip(box: np.ndarray, ratio: float) -> np.ndarray | None:
    cv2 = opencv()
    area = cv2.contourArea(box)
    length = cv2.arcLength(box, True)
    if length == 0:
        return None
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    expanded = offset.Execute(area * ratio / length)
    if len(expanded) != 1:
        return None
    return np.asarray(expanded[0], dtype=np.float32)


def decode(
    prob_map: np.ndarray,
    options: DbOptions,
    transform: FrameTransform,
    *,
    score_threshold: float = 0.0,
) -> list[Detection]:
    """Text lines of one image from its [1, H, W] or [H, W] probability map, top to bottom."""
    prob = np.asarray(prob_map, dtype=np.float32)
    if prob.ndim == 3:
        prob = prob[0]
    if prob.ndim != 2:
        raise InvalidInput(f"db_text expects a [1, H, W] map per image, got {list(prob_map.shape)}")
    bitmap: np.ndarray = (prob > options.thresh).astype(np.uint8)
    cv2 = opencv()
    if options.use_dilation:
        bitmap = np.asarray(cv2.dilate(bitmap, _DILATION))
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    box_thresh = score_threshold or options.box_thresh
    detections: list[Detection] = []
    for contour in contours[: options.max_candidates]:
        box, short_side = _mini_box(contour)
        if short_side < options.min_size:
            continue
        score = _box_score(prob, box)
        if score < box_thresh:
            continue
        grown = _unclip(box, options.unclip_ratio)
        if grown is None:
            continue
        box, short_side = _mini_box(grown)
        if short_side < options.min_size + 2:
            continue
        xs, ys = transform.to_source(box[:, 0], box[:, 1])
        xs, ys = np.round(xs), np.round(ys)
        polygon = tuple((float(x), float(y)) for x, y in zip(xs, ys, strict=True))
        # PaddleOCR drops lines whose clipped sides are 3 pixels or less.
        if min(np.hypot(xs[0] - xs[1], ys[0] - ys[1]), np.hypot(xs[0] - xs[3], ys[0] - ys[3])) <= 3:
            continue
        detections.append(
            Detection(
                x_min=float(xs.min()),
                y_min=float(ys.min()),
                x_max=float(xs.max()),
                y_max=float(ys.max()),
                score=score,
                label="text",
                polygon=polygon,
            )  # fmt: skip
        )
    # Reading order: top to bottom, then left to right within ~a line (PaddleOCR's sort).
    detections.sort(key=lambda item: (item.y_min, item.x_min))
    for index in range(len(detections) - 1):
        for inner in range(index, -1, -1):
            current, following = detections[inner], detections[inner + 1]
            if abs(following.y_min - current.y_min) < 10 and following.x_min < current.x_min:
                detections[inner], detections[inner + 1] = following, current
            else:
                break
    return detections
