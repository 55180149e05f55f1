"""The factory that picks a runtime for a plan. It lives beside the interface (base.py), not in
it, so the interface never imports its implementations; each implementation is imported only
when a plan names it (an ONNX-only server never imports torch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from server.manifest import ModelManifest
from server.models.backends.base import Backend
from server.models.runtime_plan import RuntimePlan
from server.settings import SandboxSettings


def load_backend(
    version_dir: Path,
    manifest: ModelManifest,
    plan: RuntimePlan,
    sandbox: SandboxSettings,
    *,
    on_worker_restart: Callable[[], None] | None = None,
    on_run_timeout: Callable[[], None] | None = None,
) -> Backend:
    """Load the model file the plan names. Blocking: call it off the event loop.
    `on_worker_restart`: called each time a confined model's worker process dies;
    `on_run_timeout`: each time a run is stopped for passing the run time limit."""
    model_path = Path(plan.model_file)
    if not model_path.is_absolute():
        model_path = version_dir / model_path
    if plan.backend == "onnx":
        from server.models.backends.onnx import OnnxBackend

        return OnnxBackend(
            model_path,
            manifest,
            plan,
            run_timeout_s=sandbox.run_timeout_s,
            on_timeout=on_run_timeout,
        )
    if plan.backend == "torchscript":
        # TorchScript is code: it runs in a confined worker process, never in this one (and
        # this process never imports torch for it).
        from server.models.backends.confined_torchscript import ConfinedTorchScriptBackend

        return ConfinedTorchScriptBackend(
            model_path,
            version_dir,
            manifest,
            plan,
            sandbox,
            on_restart=on_worker_restart,
            on_timeout=on_run_timeout,
        )
    raise ValueError(f"unknown backend {plan.backend!r}")
