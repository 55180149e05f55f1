"""Compare a converted model's outputs with eager PyTorch, example by example.

An element passes when |candidate - eager| <= atol + rtol * |eager| (numpy's allclose rule).
The relative difference is reported only over elements larger than atol, where it means
something; tiny elements are judged by the absolute difference alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.export.runners import Runner

_ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-3
    # Fraction of rows whose arg-max class must agree with eager (classifiers only).
    min_top1: float = 1.0


@dataclass(frozen=True)
class OutputCheck:
    output: str
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float | None
    passed: bool
    problem: str | None = None


@dataclass(frozen=True)
class ExampleCheck:
    example: int
    input_shapes: list[list[int]]
    outputs: list[OutputCheck] = field(default_factory=list)
    # The candidate could not run this example at all.
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(check.passed for check in self.outputs)


@dataclass(frozen=True)
class TargetVerification:
    target: str
    examples: list[ExampleCheck]

    @property
    def passed(self) -> bool:
        return bool(self.examples) and all(example.passed for example in self.examples)

    def first_failure(self) -> str | None:
        for example in self.examples:
            if example.error:
                return f"example {example.example}: {example.error}"
            for check in example.outputs:
                if not check.passed:
                    return f"example {example.example}, output {check.output}: {check.problem}"
        return None


def compare_output(
    name: str,
    reference: npt.NDArray[Any],
    candidate: npt.NDArray[Any],
    tolerance: Tolerance,
    classifier: bool,
) -> OutputCheck:
    if reference.shape != candidate.shape:
        return OutputCheck(
            name, float("inf"), float("inf"), None, False,
            f"shape {list(candidate.shape)} differs from eager {list(reference.shape)}",
        )  # fmt: skip
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    diff = np.abs(got - ref)
    if diff.size == 0:
        return OutputCheck(name, 0.0, 0.0, None, True)
    max_abs = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan")
    significant = np.abs(ref) > tolerance.atol
    max_rel = (
        float(np.max(diff[significant] / np.abs(ref[significant]))) if significant.any() else 0.0
    )
    within = bool(np.all(diff <= tolerance.atol + tolerance.rtol * np.abs(ref)))
    top1: float | None = None
    problem = (
        None
        if within
        else (
            f"max abs diff {max_abs:.3g} exceeds atol {tolerance.atol:g} + rtol {tolerance.rtol:g}"
        )
    )
    if classifier and ref.ndim >= 2:
        agree = np.argmax(ref, axis=-1) == np.argmax(got, axis=-1)
        top1 = float(agree.mean())
        if top1 < tolerance.min_top1:
            problem = f"top-1 agreement {top1:.3f} below {tolerance.min_top1:g}"
    return OutputCheck(name, max_abs, max_rel, top1, within and problem is None, problem)


def compare_outputs(
    names: Sequence[str],
    references: Sequence[npt.NDArray[Any]],
    candidates: Sequence[npt.NDArray[Any]],
    tolerance: Tolerance,
    classifier_output: str | None,
) -> list[OutputCheck]:
    if len(candidates) != len(references):
        return [
            OutputCheck(
                "*",
                float("inf"),
                float("inf"),
                None,
                False,
                f"{len(candidates)} outputs, eager has {len(references)}",
            )  # fmt: skip
        ]
    return [
        compare_output(name, ref, got, tolerance, classifier=name == classifier_output)
        for name, ref, got in zip(names, references, candidates, strict=True)
    ]


def first_line(exc: BaseException) -> str:
    """The line of an error message that says what failed. TorchScript's interpreter opens with
    a generic line and ends with the original `SomeError: detail`; prefer that."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if lines and "TorchScript interpreter" in lines[0]:
        cause = next((line for line in reversed(lines) if _ERROR_LINE.match(line)), None)
        if cause:
            return cause
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def verify_target(
    target: str,
    runner: Runner,
    examples: Sequence[Sequence[npt.NDArray[Any]]],
    references: Sequence[Sequence[npt.NDArray[Any]]],
    output_names: Sequence[str],
    tolerance: Tolerance,
    classifier_output: str | None,
) -> TargetVerification:
    checks = []
    for index, (inputs, reference) in enumerate(zip(examples, references, strict=True)):
        shapes = [list(array.shape) for array in inputs]
        try:
            candidate = runner(inputs)
        except Exception as exc:  # a converted model failing on an input is a verdict, not a crash
            checks.append(ExampleCheck(index, shapes, error=first_line(exc)))
            continue
        outputs = compare_outputs(output_names, reference, candidate, tolerance, classifier_output)
        checks.append(ExampleCheck(index, shapes, outputs))
    return TargetVerification(target, checks)
