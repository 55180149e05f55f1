"""How `edgefleet` commands fail: one line on stderr and an exit code from one table.

| code | meaning |
|------|---------|
| 0 | success |
| 1 | the work itself failed (a stream failed, a rollout aborted) |
| 2 | bad command line, settings or files: fix the invocation |
| 3 | a port is already in use |
| 4 | a model named on the command line is missing or failed to load |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import NoReturn

import click
from pydantic import ValidationError

from server.errors import PortInUse, RequiredModelFailed, StartupError


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    PORT_IN_USE = 3
    MODEL_FAILED = 4
    INTERRUPTED = 130


def exit_code_for(error: StartupError) -> ExitCode:
    if isinstance(error, PortInUse):
        return ExitCode.PORT_IN_USE
    if isinstance(error, RequiredModelFailed):
        return ExitCode.MODEL_FAILED
    return ExitCode.USAGE


def fail(message: str, code: ExitCode) -> NoReturn:
    """Print `edgefleet: MESSAGE` on stderr and exit with `code` (no traceback)."""
    click.echo(f"edgefleet: {message}", err=True)
    raise click.exceptions.Exit(int(code))


# Packages only an extra installs (pyproject.toml, docs/install.md), and that extra.
EXTRA_FOR_MODULE = {
    "cv2": "camera",
    "torch": "torchscript",
    "onnx": "int8",
    "sympy": "int8",
    "pyclipper": "ocr",
    "psycopg": "controller",
    "psycopg_pool": "controller",
    "skimage": "models",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """One line naming the extra that installs the missing module, or None if it is not an
    extra's (then the error is a bug, not the install)."""
    module = (error.name or "").split(".")[0]
    extra = EXTRA_FOR_MODULE.get(module)
    if extra is None:
        return None
    return (
        f"this command needs {module}, which this install does not have: "
        f"pip install 'edgefleet[{extra}]' (docs/install.md lists what each extra adds)"
    )


def settings_error(error: ValidationError, *, prefix: str, flags: bool = True) -> str:
    """The first problem of a settings object, as a flag (when it has flags) and an
    environment variable."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "settings"
    variable = prefix + field.upper()
    named = f"--{field.replace('_', '-')} / {variable}" if flags else variable
    value = first.get("input")
    shown = f" {value!r}" if isinstance(value, str | int | float) else ""
    return f"{named}{shown}: {first['msg']}"


class _CalibrationNoise(logging.Filter):
    """onnxruntime's int8 quantizer logs one INFO line per rescaled weight ("Increased scale
    ...", ~80 on the first serve) through the root logger; keep them for DEBUG only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not str(record.msg).startswith("Increased scale"):
            return True
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_third_party_logs() -> None:
    logging.getLogger().addFilter(_CalibrationNoise())
