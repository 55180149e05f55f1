"""TorchScript backend. This module is the only place the server imports torch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from server.errors import ModelLoadError, first_line
from server.manifest import ModelManifest
from server.models.runtime_plan import RuntimePlan
from server.models.types import Arrays


class TorchScriptBackend:
    def __init__(self, model_path: Path, manifest: ModelManifest, plan: RuntimePlan) -> None:
        self._input_names = [spec.name for spec in manifest.inputs]
        self._output_names = [spec.name for spec in manifest.outputs]
        self._threads = plan.intra_op_threads
        torch.set_num_threads(plan.intra_op_threads)
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript; serving existing models is the point.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                module = torch.jit.load(str(model_path), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch raises RuntimeError with C++ traces for corrupt files
            raise ModelLoadError(
                f"{manifest.name}/{manifest.version}: torch cannot load {model_path.name}: "
                f"{first_line(exc, model_path)}"
            ) from exc
        self._module = module.eval()

    @property
    def description(self) -> str:
        return f"torch {torch.__version__} TorchScript (cpu, {self._threads} threads)"

    @property
    def provider(self) -> str:
        return "cpu"

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

    def close(self) -> None:
        del self._module
