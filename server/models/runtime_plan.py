"""What a model version runs with, and why: the contract between planners and backends.

`ManifestPlanner` is the plain planner: it takes the manifest's batching and pins and the
execution providers onnxruntime offers here. The hardware planner (`server.hardware`) decides
from probed facts and a policy instead; both return the same `RuntimePlan`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from server.manifest import ModelManifest

# Fastest first; CPU is always last and always present.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)


@dataclass(frozen=True)
class RuntimePlan:
    backend: str
    # The file to load, relative to the version directory (a converted model may differ).
    model_file: str
    providers: tuple[str, ...]
    precision: str
    intra_op_threads: int
    inter_op_threads: int
    max_batch_size: int
    max_queue_delay_us: int
    max_queue_size: int
    instance_count: int = 1
    # One line per decision: "precision" -> "fp32: no int8-capable CPU features".
    reasons: Mapping[str, str] = field(default_factory=dict)
    # Decisions taken from the manifest or the command line, not made by the planner.
    pinned: frozenset[str] = frozenset()
    # A precision being converted and judged in the background ("int8"); "" when none.
    pending: str = ""

    @property
    def shown_model_file(self) -> str:
        """The model file as clients see it: relative to the version directory, or for a copy
        converted on this device its name in the planner's cache; never a host path."""
        if not os.path.isabs(self.model_file):
            return self.model_file
        return f"<planner cache>/{os.path.basename(self.model_file)}"

    def to_dict(self) -> dict[str, Any]:
        """For display (ModelConfig, probe, telemetry): no host paths."""
        data = asdict(self)
        data["model_file"] = self.shown_model_file
        data["providers"] = list(self.providers)
        data["reasons"] = dict(self.reasons)
        data["pinned"] = sorted(self.pinned)
        return data


@dataclass(frozen=True)
class UpgradeJob:
    """Work that may give a loaded version a better plan: run `argv` with `stdin` (a child
    process), then `finish(returncode, stdout, stderr)` (blocking) gives the plan to serve."""

    argv: list[str]
    stdin: bytes
    finish: Callable[[int, bytes, bytes], RuntimePlan]


class Planner(Protocol):
    def plan(self, version_dir: Path, manifest: ModelManifest) -> RuntimePlan:
        """Decide how to run one model version. May be slow (autotune): runs off-loop."""
        ...

    def upgrade_job(
        self, version_dir: Path, manifest: ModelManifest, plan: RuntimePlan
    ) -> UpgradeJob | None:
        """The background work a plan with `pending` set waits for; None when there is none."""
        ...

    def observe_process(self, backend: str, process_bytes: int) -> None:
        """What a loaded version's separate runtime process measured (Backend.process_bytes),
        for the plans that follow."""
        ...


def available_onnx_providers() -> tuple[str, ...]:
    import onnxruntime

    offered = set(onnxruntime.get_available_providers())
    return tuple(name for name in PROVIDER_PREFERENCE if name in offered) or (
        "CPUExecutionProvider",
    )


class ManifestPlanner:
    """Runs what the manifest says, on every provider offered here, with one intra-op thread
    per available core. `intra_op_threads` and `max_batch_size` are the command line's pins:
    they win over the manifest's, and the plan's reasons say where each value came from."""

    def __init__(
        self, intra_op_threads: int | None = None, max_batch_size: int | None = None
    ) -> None:
        self._intra_op_threads = intra_op_threads
        self._max_batch_size = max_batch_size

    def upgrade_job(
        self, version_dir: Path, manifest: ModelManifest, plan: RuntimePlan
    ) -> UpgradeJob | None:
        return None

    def observe_process(self, backend: str, process_bytes: int) -> None:
        """No memory check here: nothing to learn."""

    def plan(self, version_dir: Path, manifest: ModelManifest) -> RuntimePlan:
        pins = manifest.runtime
        pinned: set[str] = set()
        reasons: dict[str, str] = {"backend": f"the manifest's format is {manifest.format}"}
        if pins.providers:
            providers, reasons["providers"] = tuple(pins.providers), "pinned in the manifest"
            pinned.add("providers")
        elif manifest.format == "onnx":
            providers = available_onnx_providers()
            reasons["providers"] = "every onnxruntime provider available here, fastest first"
        else:
            providers, reasons["providers"] = ("cpu",), "TorchScript runs on the CPU here"
        cores = len(os.sched_getaffinity(0))
        if self._intra_op_threads is not None:
            threads, reasons["intra_op_threads"] = (
                self._intra_op_threads,
                "pinned on the command line",
            )
        elif pins.intra_op_threads is not None:
            threads, reasons["intra_op_threads"] = pins.intra_op_threads, "pinned in the manifest"
        else:
            threads = cores
            reasons["intra_op_threads"] = f"{cores} cores available to this process"
        if manifest.batching.max_batch_size == 0:
            # No batch dimension: a batch size pin cannot add one.
            max_batch = 0
            reasons["max_batch_size"] = "0: the model has no batch dimension"
        elif self._max_batch_size is not None:
            max_batch, reasons["max_batch_size"] = (
                self._max_batch_size,
                "pinned on the command line",
            )
        elif pins.max_batch_size is not None:
            max_batch, reasons["max_batch_size"] = pins.max_batch_size, "pinned in the manifest"
        else:
            max_batch = manifest.batching.max_batch_size
        delay = (
            pins.max_queue_delay_us
            if pins.max_queue_delay_us is not None
            else manifest.batching.max_queue_delay_us
        )
        for key in ("intra_op_threads", "max_batch_size", "max_queue_delay_us", "precision"):
            if getattr(pins, key) is not None:
                pinned.add(key)
        if self._intra_op_threads is not None:
            pinned.add("intra_op_threads")
        if self._max_batch_size is not None and max_batch:
            pinned.add("max_batch_size")
        reasons.setdefault("max_batch_size", "from the manifest's batching section")
        return RuntimePlan(
            backend=manifest.format,
            model_file=manifest.model_file,
            providers=providers,
            precision=pins.precision or "fp32",
            intra_op_threads=threads,
            inter_op_threads=pins.inter_op_threads or 1,
            max_batch_size=max_batch,
            max_queue_delay_us=delay,
            max_queue_size=manifest.batching.max_queue_size,
            instance_count=pins.instance_count or 1,
            reasons=reasons,
            pinned=frozenset(pinned),
        )
