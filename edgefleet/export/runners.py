"""One calling convention for eager PyTorch, TorchScript files and ONNX Runtime sessions.

A runner takes the inputs as numpy arrays and returns the outputs as numpy arrays, so the
verifier and the benchmark treat all three alike.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgefleet.export.errors import ExampleRejected

if TYPE_CHECKING:
    import torch

Arrays = list[npt.NDArray[Any]]
Runner = Callable[[Sequence[npt.NDArray[Any]]], Arrays]


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect the warnings torch emits during tracing and export instead of printing them.

    The tracer's warnings are evidence for the trace-safety check; the rest (deprecation of
    TorchScript and of the legacy ONNX exporter, which we use on purpose, constant-folding
    notes) are logged at DEBUG by the caller.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """The ONNX exporter prints its IR graph on failure from C++ straight to fd 1; keep stdout
    clean for `--output json`."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def as_output_list(result: Any) -> list[torch.Tensor]:
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, list | tuple) and all(isinstance(item, torch.Tensor) for item in result):
        return list(result)
    raise ExampleRejected(
        f"the model returned {type(result).__name__}; export needs a tensor or a tuple of tensors"
    )


def torch_runner(module: Callable[..., Any]) -> Runner:
    """Eager modules and loaded TorchScript modules alike, without autograd."""
    import torch

    def run(inputs: Sequence[npt.NDArray[Any]]) -> Arrays:
        with torch.inference_mode():
            result = module(*(torch.from_numpy(np.asarray(array)) for array in inputs))
        return [tensor.numpy() for tensor in as_output_list(result)]

    return run


def torchscript_file_runner(path: Path) -> Runner:
    """Loads the file written to disk, so what is verified is what will be served."""
    import torch

    with recorded_warnings():  # torch.jit.load is deprecated in 2.13; we serve it on purpose
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return torch_runner(module.eval())


def onnx_file_runner(path: Path, input_names: Sequence[str], threads: int | None = None) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # Loop subgraphs make ORT warn about symbolic shapes it cannot check, and a failing run is
    # logged as well as raised; the raised error is what the report shows.
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = list(input_names)

    def run(inputs: Sequence[npt.NDArray[Any]]) -> Arrays:
        feed = {
            name: np.ascontiguousarray(array) for name, array in zip(names, inputs, strict=True)
        }
        return [np.asarray(output) for output in session.run(None, feed)]

    return run
