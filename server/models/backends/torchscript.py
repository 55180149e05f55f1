"""TorchScript in this process. Only the confined worker (torchscript_worker.py) runs it on a
server; the in-process path is kept as the benchmark's baseline (bench_torchscript_confined.py).
This module and the worker are the only places that import torch."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from server.errors import ModelLoadError, first_line
from server.manifest import ModelManifest
from server.models.runtime_plan import RuntimePlan
from server.models.types import Arrays


class TorchScriptBackend:
    def __init__(
        self,
        model_path: Path,
        *,
        model: str,
        input_names: list[str],
        output_names: list[str],
        threads: int,
        source: BinaryIO | None = None,
    ) -> None:
        """`source`: the archive already opened (the worker opens it before dropping root)."""
        self._input_names = input_names
        self._output_names = output_names
        self._threads = threads
        torch.set_num_threads(threads)
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript; serving existing models is the point.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                module = torch.jit.load(  # type: ignore[no-untyped-call]
                    source if source is not None else str(model_path), map_location="cpu"
                )
        except Exception as exc:  # torch raises RuntimeError with C++ traces for corrupt files
            raise ModelLoadError(
                f"{model}: torch cannot load {model_path.name}: {_reason(exc, model_path)}"
            ) from exc
        self._module = module.eval()

    @classmethod
    def in_process(
        cls, model_path: Path, manifest: ModelManifest, plan: RuntimePlan
    ) -> TorchScriptBackend:
        return cls(
            model_path,
            model=f"{manifest.name}/{manifest.version}",
            input_names=[spec.name for spec in manifest.inputs],
            output_names=[spec.name for spec in manifest.outputs],
            threads=plan.intra_op_threads,
        )

    @property
    def description(self) -> str:
        return f"torch {torch.__version__} TorchScript (cpu, {self._threads} threads)"

    @property
    def provider(self) -> str:
        return "cpu"

    @property
    def process_bytes(self) -> int:
        return 0  # runs in the calling process

    def run(self, inputs: Arrays, output_names: list[str]) -> Arrays:
        # Request bytes arrive as read-only views; torch needs writable memory (copied only then).
        tensors = [
            torch.from_numpy(np.require(inputs[name], requirements=["C", "W"]))
            for name in self._input_names
        ]
        with torch.inference_mode():
            result = self._module(*tensors)
        outputs = result if isinstance(result, tuple | list) else (result,)
        by_name = {
            name: tensor.numpy() for name, tensor in zip(self._output_names, outputs, strict=True)
        }
        return {name: by_name[name] for name in output_names}

    def interrupt(self) -> None:
        """A run in this process cannot be stopped: it finishes."""

    def close(self) -> None:
        del self._module


def _reason(error: BaseException, model_path: Path) -> str:
    """A TorchScript interpreter error's first line only says that it failed; its last line
    (the failing operation's own error) says why."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
        return first_line(RuntimeError(lines[-1]), model_path)
    return first_line(error, model_path)
