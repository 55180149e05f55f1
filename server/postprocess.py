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
    """Triton's classification extension: a [batch, k] BYTES tensor of b"score:index:label"."""
    rows = top_k(scores, k, labels, apply_softmax=apply_softmax)
    result = np.empty((len(rows), k if rows else 0), dtype=object)
    for row_index, row in enumerate(rows):
        for col, item in enumerate(row):
            text = f"{item.score:f}:{item.class_id}"
            if item.class_id < len(labels):
                text += f":{item.label}"
            result[row_index, col] = text.encode()
    return result
