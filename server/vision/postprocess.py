"""Model outputs to results: softmax and top-k labels, vectorised over the batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelScore:
    class_id: int
    label: str
    score: float


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def top_k(
    scores: np.ndarray, k: int, labels: list[str], *, apply_softmax: bool
) -> list[list[LabelScore]]:
    """Top-k classes per row of a [batch, classes] (or [batch, ..., classes]) score tensor."""
    flat = scores.reshape(scores.shape[0], -1).astype(np.float32, copy=False)
    if apply_softmax:
        flat = softmax(flat)
    k = min(k, flat.shape[1])
    candidates = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    rows = np.arange(flat.shape[0])[:, None]
    order = np.argsort(-flat[rows, candidates], axis=1)
    best = candidates[rows, order]
    return [
        [
            LabelScore(
                class_id=int(class_id),
                label=labels[class_id] if class_id < len(labels) else str(class_id),
                score=float(flat[row, class_id]),
            )
            for class_id in best[row]
        ]
        for row in range(flat.shape[0])
    ]


def classification_strings(
    scores: np.ndarray, k: int, labels: list[str], *, apply_softmax: bool
) -> np.ndarray:
    """Triton's classification extension: a [batch, k] BYTES tensor of b"score:index:label".
    Like Triton, a count beyond the number of classes returns every class, once."""
    flat = scores.reshape(scores.shape[0], -1).astype(np.float32, copy=False)
    if apply_softmax:
        flat = softmax(flat)
    k = min(k, flat.shape[1]) if flat.shape[0] else 0
    result = np.empty((flat.shape[0], k), dtype=object)
    if k == 0:
        return result
    candidates = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    rows = np.arange(flat.shape[0])[:, None]
    best = candidates[rows, np.argsort(-flat[rows, candidates], axis=1)]
    best_scores = flat[rows, best].tolist()
    named = len(labels)
    for row, (indices, values) in enumerate(zip(best.tolist(), best_scores, strict=True)):
        result[row] = [
            (
                f"{value:f}:{index}:{labels[index]}" if index < named else f"{value:f}:{index}"
            ).encode()
            for index, value in zip(indices, values, strict=True)
        ]
    return result


def classification_width(scores: np.ndarray) -> int:
    """Classes per row of a [batch, ...] score tensor: the most a classification can return."""
    return int(np.prod(scores.shape[1:], dtype=np.int64)) if scores.ndim > 1 else 1
