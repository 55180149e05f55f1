"""The one interface every runtime implements, and the factory that picks one."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from server.manifest import ModelManifest
from server.models.runtime_plan import RuntimePlan
from server.models.types import Arrays


class Backend(Protocol):
    """A loaded model. `run` blocks and is called from one executor thread at a time."""

    @property
    def description(self) -> str:
        """Runtime, version and providers actually in use, for logs and metadata."""
        ...

    @property
    def provider(self) -> str:
        """The execution provider running the model, e.g. CPUExecutionProvider."""
        ...

    def run(self, inputs: Arrays, output_names: list[str]) -> Arrays: ...

    def close(self) -> None: ...


def load_backend(version_dir: Path, manifest: ModelManifest, plan: RuntimePlan) -> Backend:
    """Load the model file the plan names. Blocking: call it off the event loop."""
    model_path = Path(plan.model_file)
    if not model_path.is_absolute():
        model_path = version_dir / model_path
    if plan.backend == "onnx":
        from server.models.backends.onnx import OnnxBackend

        return OnnxBackend(model_path, manifest, plan)
    if plan.backend == "torchscript":
        # Only here is torch imported: an ONNX-only server never pays for it.
        from server.models.backends.torchscript import TorchScriptBackend

        return TorchScriptBackend(model_path, manifest, plan)
    raise ValueError(f"unknown backend {plan.backend!r}")
