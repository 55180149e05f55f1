"""The accuracy guard's measures: how far a reduced-precision model's answers are from fp32's.

Classifiers are judged on the decisions a user acts on: top-1 agreement on the inputs where
fp32 itself is confident (its top softmax score above a threshold; a flip between two guesses
on a picture fp32 cannot name is not a regression), fp32's top-1 inside the candidate's top-5,
and the mean KL divergence between the two softmax distributions. Top-1 agreement on every
input and the relative logit error are reported too. Raw outputs are judged by relative error
(L2 norm of the difference over the L2 norm of the fp32 output), worst and mean.

Pure numpy: no onnx, no onnxruntime, so the serving process can re-check a cached verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Metric names, stored in verdicts.
TOP1_CONFIDENT = "top1_confident"
CONFIDENT_INPUTS = "confident_inputs"
TOP1_ALL = "top1_all"
TOP5 = "fp32_top1_in_top5"
KL_MEAN = "kl_mean"
LOGIT_ERROR = "logit_error_mean"
REL_ERROR_MAX = "relative_error_max"
REL_ERROR_MEAN = "relative_error_mean"

LABELS = {
    TOP1_CONFIDENT: "top-1 agreement on confident inputs",
    TOP1_ALL: "top-1 agreement on all inputs",
    TOP5: "fp32 top-1 in top-5",
    KL_MEAN: "mean KL divergence",
    LOGIT_ERROR: "mean relative logit error",
    REL_ERROR_MAX: "worst relative error",
    REL_ERROR_MEAN: "mean relative error",
}
PERCENT = {TOP1_CONFIDENT, TOP1_ALL, TOP5}


@dataclass(frozen=True)
class GuardThresholds:
    # fp32's top softmax score above which an input counts as confident.
    confident_score: float = 0.3
    min_top1_confident: float = 0.95
    min_top5: float = 0.97
    max_kl_mean: float = 0.15
    # With fewer confident inputs than this, top-1 agreement on all inputs is judged instead.
    min_confident_inputs: int = 12
    max_relative_error: float = 0.05


@dataclass(frozen=True)
class Check:
    metric: str
    value: float
    op: str  # ">=" or "<="
    threshold: float
    # Reported beside the checks: does not decide.
    gating: bool = True

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def describe(self) -> str:
        shown = format_value(self.metric, self.value)
        if not self.gating:
            return f"{LABELS.get(self.metric, self.metric)} {shown} (reported)"
        limit = format_value(self.metric, self.threshold)
        mark = "ok" if self.passed else "FAILS"
        return f"{LABELS.get(self.metric, self.metric)} {shown} (needs {self.op} {limit}: {mark})"


def format_value(metric: str, value: float) -> str:
    return f"{value:.1%}" if metric in PERCENT else f"{value:.4f}"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of probabilities; rows that already are probabilities are kept as they are."""
    rows = logits.astype(np.float64)
    sums = rows.sum(axis=1)
    if (rows >= 0).all() and np.allclose(sums, 1.0, atol=1e-3):
        return rows
    shifted = rows - rows.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out


def classifier_metrics(
    reference: np.ndarray, candidate: np.ndarray, confident_score: float
) -> dict[str, float]:
    """Metrics over rows of class scores (inputs x classes), fp32 `reference` first."""
    ref = reference.reshape(reference.shape[0], -1).astype(np.float64)
    cand = candidate.reshape(candidate.shape[0], -1).astype(np.float64)
    p, q = softmax(ref), softmax(cand)
    ref_top1 = p.argmax(axis=1)
    cand_top1 = q.argmax(axis=1)
    agree = ref_top1 == cand_top1
    confident = p.max(axis=1) > confident_score
    top_k = min(5, cand.shape[1])
    cand_top5 = np.argsort(-cand, axis=1)[:, :top_k]
    in_top5 = (cand_top5 == ref_top1[:, None]).any(axis=1)
    eps = 1e-12
    kl = (p * (np.log(p + eps) - np.log(q + eps))).sum(axis=1)
    logit_error = np.linalg.norm(ref - cand, axis=1) / np.maximum(
        np.linalg.norm(ref, axis=1), 1e-12
    )
    return {
        TOP1_CONFIDENT: float(agree[confident].mean()) if confident.any() else 0.0,
        CONFIDENT_INPUTS: float(confident.sum()),
        TOP1_ALL: float(agree.mean()),
        TOP5: float(in_top5.mean()),
        KL_MEAN: float(np.maximum(kl, 0).mean()),
        LOGIT_ERROR: float(logit_error.mean()),
    }


def raw_metrics(
    reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]
) -> dict[str, float]:
    """Relative error per output tensor per input, worst and mean."""
    errors = []
    for want_all, got_all in zip(reference, candidate, strict=True):
        for want, got in zip(want_all, got_all, strict=True):
            want64 = np.asarray(want, dtype=np.float64)
            diff = np.linalg.norm(want64 - np.asarray(got, dtype=np.float64))
            errors.append(float(diff / max(float(np.linalg.norm(want64)), 1e-12)))
    return {REL_ERROR_MAX: max(errors), REL_ERROR_MEAN: float(np.mean(errors))}


def checks_for(metrics: dict[str, float], thresholds: GuardThresholds) -> list[Check]:
    """The checks that decide (and those only reported), from stored metrics."""
    if REL_ERROR_MAX in metrics:
        return [
            Check(REL_ERROR_MAX, metrics[REL_ERROR_MAX], "<=", thresholds.max_relative_error),
            Check(REL_ERROR_MEAN, metrics[REL_ERROR_MEAN], "<=", 0.0, gating=False),
        ]
    enough = metrics[CONFIDENT_INPUTS] >= thresholds.min_confident_inputs
    judged, other = (TOP1_CONFIDENT, TOP1_ALL) if enough else (TOP1_ALL, TOP1_CONFIDENT)
    return [
        Check(judged, metrics[judged], ">=", thresholds.min_top1_confident),
        Check(TOP5, metrics[TOP5], ">=", thresholds.min_top5),
        Check(KL_MEAN, metrics[KL_MEAN], "<=", thresholds.max_kl_mean),
        Check(other, metrics[other], ">=", 0.0, gating=False),
        Check(LOGIT_ERROR, metrics[LOGIT_ERROR], "<=", 0.0, gating=False),
    ]


def confident_note(metrics: dict[str, float], thresholds: GuardThresholds) -> str:
    if CONFIDENT_INPUTS not in metrics:
        return ""
    count = int(metrics[CONFIDENT_INPUTS])
    if count < thresholds.min_confident_inputs:
        return (
            f"only {count} confident inputs (fp32 score > {thresholds.confident_score:g}), "
            f"fewer than {thresholds.min_confident_inputs}: all inputs judged"
        )
    return f"{count} confident inputs (fp32 score > {thresholds.confident_score:g})"
