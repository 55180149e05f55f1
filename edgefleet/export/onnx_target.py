"""Export a converted module to ONNX with dynamic axes and check it with `onnx.checker`.

torch 2.13's default exporter is the dynamo one, which needs `onnxscript`; the TorchScript-based
exporter (`dynamo=False`) ships with torch, exports scripted control flow as ONNX Loop/If, and
is what this device can run. It warns that it is legacy; we use it on purpose.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.export.errors import OnnxExportFailed
from edgefleet.export.runners import recorded_warnings, stdout_to_stderr
from edgefleet.export.verify import first_line

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
_UNSUPPORTED = re.compile(r"Exporting the operator '([^']+)' to ONNX opset version (\d+)")


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = DEFAULT_OPSET,
) -> None:
    """Write and check `path`; raise OnnxExportFailed naming the operator ONNX lacks."""
    import onnx
    import torch

    try:
        with recorded_warnings() as caught, stdout_to_stderr(), torch.no_grad():
            torch.onnx.export(
                module, example, str(path),
                input_names=list(input_names), output_names=list(output_names),
                dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
                opset_version=opset, dynamo=False,
            )  # fmt: skip
    except Exception as exc:
        unsupported = _UNSUPPORTED.search(str(exc))
        if unsupported:
            raise OnnxExportFailed(
                f"operator {unsupported.group(1)} cannot be exported to ONNX "
                f"(opset {unsupported.group(2)}); the TorchScript target is unaffected"
            ) from exc
        raise OnnxExportFailed(f"ONNX export failed: {first_line(exc)}") from exc
    for note in sorted({str(warning.message).split(". ")[0] for warning in caught}):
        log.debug("torch.onnx.export: %s", note)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError or InferenceError
        raise OnnxExportFailed(
            f"onnx.checker rejects the exported model: {first_line(exc)}"
        ) from exc
