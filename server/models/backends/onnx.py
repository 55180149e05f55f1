"""ONNX Runtime backend.

ONNX models run in the server process (onnxruntime has no file or network operators), but a
model file is untrusted input all the same: a `Loop` whose trip count comes from an input, or
from a constant of a billion, runs as long as its author likes and holds its executor thread,
the model's requests and shutdown. So each run has the same time limit as a confined model's
(`EDGEFLEET_SANDBOX_RUN_TIMEOUT_S`): past it onnxruntime is told to stop (`RunOptions.
terminate`, which it checks between nodes, inside loops too), the run answers DEADLINE_EXCEEDED
and the session keeps serving; a stopping server stops a run still going after its grace.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from server.errors import ModelLoadError, ModelRunTimedOut, first_line
from server.manifest import ModelManifest
from server.models.runtime_plan import RuntimePlan
from server.models.types import Arrays

log = logging.getLogger(__name__)

# How often the watch thread looks at the runs in progress: a run stops within this of its
# limit. Arming a timer per run instead cost 0.3 ms of CPU per run.
WATCH_INTERVAL_S = 0.25


class _RunWatch:
    """One thread for every ONNX session of the process, started with the first: it stops the
    runs past their limit (`OnnxBackend.stop_if_past`)."""

    def __init__(self) -> None:
        self._backends: weakref.WeakSet[OnnxBackend] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, backend: OnnxBackend) -> None:
        with self._lock:
            self._backends.add(backend)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch_forever, name="onnx-run-limit", daemon=True
                )
                self._thread.start()

    def _watch_forever(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            with self._lock:
                backends = list(self._backends)
            for backend in backends:
                backend.stop_if_past(now)


_WATCH = _RunWatch()


class OnnxBackend:
    def __init__(
        self,
        model_path: Path,
        manifest: ModelManifest,
        plan: RuntimePlan,
        *,
        run_timeout_s: float,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self._label = f"{manifest.name}/{manifest.version}"
        self._run_timeout_s = run_timeout_s
        self._on_timeout = on_timeout
        # The run in progress (`run` is called from one thread at a time): when it began and
        # its options, whose `terminate` stops it; the options of the one the limit stopped.
        self._run: tuple[float, ort.RunOptions] | None = None
        self._expired: ort.RunOptions | None = None
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
        _WATCH.watch(self)

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
        options = ort.RunOptions()
        self._run = (time.monotonic(), options)  # seen by the watch thread
        try:
            values = self._session.run(output_names, inputs, options)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            if self._expired is options:
                raise self._timed_out() from exc
            raise
        finally:
            self._run = None
        return dict(zip(output_names, values, strict=True))

    def stop_if_past(self, now: float) -> None:
        """Stop the run in progress if it passed the limit (the watch thread)."""
        run = self._run
        if run is not None and now - run[0] > self._run_timeout_s:
            self._expired = run[1]
            run[1].terminate = True

    def _timed_out(self) -> ModelRunTimedOut:
        if self._on_timeout is not None:
            self._on_timeout()
        limit = f"{self._run_timeout_s:g} s"
        log.error("model %s: run passed the %s limit; onnxruntime stopped it", self._label, limit)
        return ModelRunTimedOut(
            f"model {self._label}: its run passed the device's limit of {limit} "
            "(EDGEFLEET_SANDBOX_RUN_TIMEOUT_S); onnxruntime stopped it; the model keeps serving"
        )

    def interrupt(self) -> None:
        """Stop the run in progress (the server stops past its grace): onnxruntime checks the
        flag between nodes."""
        run = self._run
        if run is not None:
            run[1].terminate = True

    def close(self) -> None:
        del self._session
