"""Trace or script: pick the TorchScript conversion that reproduces eager, and say why.

Tracing records the one path the first example took. It is unsafe when the model has
data-dependent control flow or bakes in a size; we catch that by running the trace on a second
example with other values and other sizes along every dynamic dimension, and by listening to
the tracer's own warnings. Scripting compiles the Python source, control flow included, but
rejects constructs TorchScript lacks; its error names the construct and the line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy.typing as npt

from edgefleet.export.errors import ScriptFailed, TraceUnsafe
from edgefleet.export.runners import recorded_warnings, torch_runner
from edgefleet.export.verify import Tolerance, compare_outputs, first_line

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Method = Literal["auto", "trace", "script"]
_SOURCE_LOCATION = re.compile(r'File "([^"]+)", line (\d+)')


@dataclass(frozen=True)
class Conversion:
    module: torch.jit.ScriptModule
    method: Literal["trace", "script"]
    # Why this method: the evidence, in one or two sentences.
    reason: str
    # Why tracing is unsafe for this model; empty when the trace reproduced eager everywhere.
    trace_findings: list[str] = field(default_factory=list)
    script_error: str | None = None


def describe_script_error(model: torch.nn.Module, exc: BaseException) -> str:
    """`torch.jit.script`'s error, reduced to what is unsupported, where, and the code line."""
    text = str(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    what = lines[0].strip().rstrip(":") if lines else type(exc).__name__
    where = _SOURCE_LOCATION.search(text)
    code = next(
        (lines[i - 1].strip() for i, line in enumerate(lines) if "<--- HERE" in line and i > 0),
        "",
    )
    location = f" at {where.group(1)}:{where.group(2)}" if where else ""
    snippet = f": `{code}`" if code else ""
    return f"cannot script {type(model).__name__}: {what}{location}{snippet}"


def script_module(model: torch.nn.Module) -> torch.jit.ScriptModule:
    import torch

    try:
        with recorded_warnings():  # torch.jit.script is deprecated in 2.13; still what we ship
            scripted = torch.jit.script(model)
    except Exception as exc:  # TorchScript's frontend raises several unrelated types
        raise ScriptFailed(describe_script_error(model, exc)) from exc
    return scripted


def trace_module(
    model: torch.nn.Module, example: tuple[torch.Tensor, ...]
) -> tuple[torch.jit.ScriptModule, list[str]]:
    """The traced module and the tracer's own warnings, each with the user's source line."""
    import torch

    with recorded_warnings() as caught, torch.no_grad():
        # check_trace re-runs the same input only; the second-example check below is stronger.
        traced = torch.jit.trace(model, example, check_trace=False)  # type: ignore[no-untyped-call]
    tracer_warnings = []
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning):  # type: ignore[attr-defined]
            message = str(warning.message).split(". ")[0]
            tracer_warnings.append(f"{warning.filename}:{warning.lineno}: {message}")
        else:
            log.debug("torch.jit.trace: %s", warning.message)
    return traced, sorted(set(tracer_warnings))


def trace_findings(
    traced: torch.jit.ScriptModule,
    examples: Sequence[tuple[torch.Tensor, ...]],
    references: Sequence[Sequence[npt.NDArray[Any]]],
    output_names: Sequence[str],
    tolerance: Tolerance,
) -> list[str]:
    """Run the trace on every example but the traced one and describe each divergence."""
    runner = torch_runner(traced)
    findings = []
    for index in range(1, len(examples)):
        inputs = [tensor.numpy() for tensor in examples[index]]
        shapes = " ".join(str(list(array.shape)) for array in inputs)
        try:
            candidate = runner(inputs)
        except Exception as exc:
            findings.append(
                f"example {index} (shapes {shapes}): the traced model fails: {first_line(exc)}"
            )
            continue
        for check in compare_outputs(output_names, references[index], candidate, tolerance, None):
            if not check.passed:
                findings.append(
                    f"example {index} (shapes {shapes}): the traced model differs from eager "
                    f"on output {check.output}: {check.problem}"
                )
    return findings


def convert(
    model: torch.nn.Module,
    examples: Sequence[tuple[torch.Tensor, ...]],
    references: Sequence[Sequence[npt.NDArray[Any]]],
    output_names: Sequence[str],
    method: Method,
    tolerance: Tolerance,
) -> Conversion:
    if method == "script":
        return Conversion(script_module(model), "script", "requested with --method script")

    try:
        traced, warned = trace_module(model, examples[0])
    except Exception as exc:  # the tracer raises whatever the model's Python raises
        failure = f"tracing failed: {first_line(exc)}"
        if method == "trace":
            raise TraceUnsafe(failure) from exc
        try:
            return _script_after_trace(model, [failure])
        except ScriptFailed as script_exc:
            raise TraceUnsafe(f"{failure}; and scripting fails: {script_exc}") from script_exc
    mismatches = trace_findings(traced, examples, references, output_names, tolerance)
    findings = mismatches + [f"tracer warning at {warning}" for warning in warned]

    if method == "trace":
        reason = "requested with --method trace"
        if findings:
            reason += f"; UNSAFE: {findings[0]}"
        return Conversion(traced, "trace", reason, findings)
    if not findings:
        return Conversion(
            traced, "trace",
            f"the trace matched eager on all {len(examples)} examples (other values and sizes) "
            "and the tracer raised no warnings",
        )  # fmt: skip
    try:
        return _script_after_trace(model, findings)
    except ScriptFailed as exc:
        if mismatches:
            raise TraceUnsafe(
                f"tracing is unsafe ({mismatches[0]}) and scripting fails: {exc}"
            ) from exc
        # The tracer only warned and the trace reproduced eager everywhere: keep it, say so.
        return Conversion(
            traced, "trace",
            f"the tracer warned ({warned[0]}) but the trace matched eager on all "
            f"{len(examples)} examples, and scripting fails: {exc}",
            findings, str(exc),
        )  # fmt: skip


def _script_after_trace(model: torch.nn.Module, findings: list[str]) -> Conversion:
    scripted = script_module(model)
    log.info("tracing is unsafe (%s); scripted instead", findings[0])
    return Conversion(
        scripted, "script", f"tracing is unsafe: {findings[0]}; scripted instead", findings
    )
