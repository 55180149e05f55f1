"""Export errors: each message says what went wrong in terms the researcher can act on."""

from __future__ import annotations


class ExportError(Exception):
    """Base of every error `edgefleet export` raises on purpose; the message is for the user."""


class ModuleImportFailed(ExportError):
    """`MODULE:FACTORY` names a module that does not import or an attribute it lacks."""


class FactoryFailed(ExportError):
    """The factory raised, or returned something other than an `nn.Module`."""


class WeightsMismatch(ExportError):
    """The weights file does not fit the architecture (missing, unexpected or reshaped keys)."""


class ExampleRejected(ExportError):
    """An example input the eager model cannot run: wrong shape, dtype or count."""


class InvalidRequest(ExportError):
    """A flag that cannot be honoured: bad shape syntax, unknown target, labels that don't fit."""


class VersionExists(ExportError):
    """The name and version are already in the repository and `--overwrite` was not given."""


class ScriptFailed(ExportError):
    """`torch.jit.script` cannot compile the module; the message names the construct and line."""


class TraceUnsafe(ExportError):
    """Tracing does not reproduce eager and scripting is not possible either."""


class OnnxExportFailed(ExportError):
    """The ONNX exporter refused the model, e.g. an operator with no ONNX equivalent."""
