"""Greedy CTC decoding of text recognisers (PP-OCR's CTCLabelDecode): per crop, the best class
per time step, repeats merged, blanks (index 0) dropped; score = mean probability of the kept
characters."""

from __future__ import annotations

import numpy as np

from server.errors import InvalidInput


def characters(listed: list[str], *, append_space: bool) -> list[str]:
    """The decoding table: blank at 0, then the model's characters, then optionally a space."""
    return ["", *listed, *([" "] if append_space else [])]


def decode(probs: np.ndarray, table: list[str]) -> list[tuple[str, float]]:
    """(text, score) per row of a [crops, time, classes] probability tensor."""
    if probs.ndim != 3:
        raise InvalidInput(f"ctc_text expects [crops, time, classes], got {list(probs.shape)}")
    if probs.shape[2] > len(table):
        raise InvalidInput(
            f"ctc_text: the model scores {probs.shape[2]} classes, the character list has "
            f"{len(table)} (blank and space included)"
        )
    best = probs.argmax(axis=2)
    best_prob = np.take_along_axis(probs, best[:, :, None], axis=2)[:, :, 0]
    keep = best != 0
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    results = []
    for row in range(best.shape[0]):
        ids = best[row][keep[row]]
        text = "".join(table[index] for index in ids)
        score = float(best_prob[row][keep[row]].mean()) if ids.size else 0.0
        results.append((text, score))
    return results
