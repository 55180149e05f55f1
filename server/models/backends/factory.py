"""The factory that picks a runtime for a plan. It lives beside the interface (base.py), not in
it, so the interface never imports its implementations; each implementation is imported only
when a plan names it (an ONNX-only server never imports torch)."""

from __future__ import annotations

from pathlib import Path

from server.manifest import ModelManifest
from server.models.backends.base import Backend
from server.models.runtime_plan import RuntimePlan


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
