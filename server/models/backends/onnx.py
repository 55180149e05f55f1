"""ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from server.errors import ModelLoadError, first_line
from server.manifest import ModelManifest
from server.models.runtime_plan import RuntimePlan
from server.models.types import Arrays


class OnnxBackend:
    def __init__(self, model_path: Path, manifest: ModelManifest, plan: RuntimePlan) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = plan.intra_op_threads
        options.inter_op_num_threads = plan.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # The arena keeps the high-water mark of every batch size ever run (+60 MB for batch 8
        # of EfficientNet-Lite0); on a memory-tight device plain allocation is worth the cost.
        options.enable_cpu_mem_arena = False
        # Intra-op threads otherwise spin-wait after every run for the next one; a server's
        # runs arrive with gaps (decode, gRPC, the next frame), so the spinning burned
        # server CPU that the cameras' decode and the gRPC threads need (docs/benchmarks.md,
        # "Server CPU per frame").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        offered = set(ort.get_available_providers())
        providers = [name for name in plan.providers if name in offered] or ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(
                f"{manifest.name}/{manifest.version}: onnxruntime cannot load "
                f"{model_path.name}: {first_line(exc, model_path)}"
            ) from exc
        model_inputs = {node.name for node in self._session.get_inputs()}
        model_outputs = {node.name for node in self._session.get_outputs()}
        declared_in = {spec.name for spec in manifest.inputs}
        declared_out = {spec.name for spec in manifest.outputs}
        if declared_in != model_inputs or not declared_out <= model_outputs:
            raise ModelLoadError(
                f"{manifest.name}/{manifest.version}: manifest tensors {sorted(declared_in)} -> "
                f"{sorted(declared_out)} do not match the ONNX graph {sorted(model_inputs)} -> "
                f"{sorted(model_outputs)}"
            )
        self._providers = self._session.get_providers()

    @property
    def description(self) -> str:
        return f"onnxruntime {ort.__version__} ({', '.join(self._providers)})"

    @property
    def provider(self) -> str:
        return str(self._providers[0])

    @property
    def process_bytes(self) -> int:
        return 0  # runs in the calling process

    def run(self, inputs: Arrays, output_names: list[str]) -> Arrays:
        values = self._session.run(output_names, inputs)
        return dict(zip(output_names, values, strict=True))

    def interrupt(self) -> None:
        """A run in this process cannot be stopped: it finishes."""

    def close(self) -> None:
        del self._session
