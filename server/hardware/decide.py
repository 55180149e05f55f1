"""The planner's decisions from facts alone: (manifest + facts + policy) -> a draft plan.

Pure and fast: no file is converted and nothing is measured here, so recorded profiles of
devices that do not exist here plan through exactly this code. `HardwarePlanner` then makes the
draft real (quantize and guard, autotune) and may revise it, with reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from server.errors import PlanRefused
from server.hardware.facts import INT8_DOT_FEATURES, HardwareFacts
from server.hardware.footprint import Footprint, process_bytes
from server.hardware.policy import PlannerSettings
from server.manifest import ModelManifest, RuntimePins
from server.models.runtime_plan import PROVIDER_PREFERENCE, RuntimePlan

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript")
MIB = 1 << 20
# Batch sizes per policy; the manifest's max_batch_size is the balanced choice.
THROUGHPUT_BATCH_CPU = 16
THROUGHPUT_BATCH_GPU = 32
THROUGHPUT_DELAY_US = 5000
# CPU threads a GPU-bound session keeps for the ops the GPU provider does not take.
GPU_HOST_THREADS = 2
# From this many cores up, the throughput policy runs two instances on half the cores each:
# two half-width sessions keep cores busier than one wide one once batches queue up. Two
# cores already gain: EfficientNet-Lite0 on 2 cores, one 2-thread session 111 frames/s vs
# two 1-thread sessions 2 x 65 in process, and 46 vs 84 frames/s served while other
# processes share the cores (docs/benchmarks.md, "Real-time under overload").
TWO_INSTANCE_CORES = 2


class Pins:
    """Pinned choices, the command line first, then the manifest; each with where it came from."""

    def __init__(self, manifest: RuntimePins, command_line: RuntimePins) -> None:
        self._manifest = manifest
        self._command_line = command_line

    def get(self, key: str) -> tuple[Any, str] | None:
        for pins, where in (
            (self._command_line, "pinned on the command line"),
            (self._manifest, "pinned in the manifest"),
        ):
            value = getattr(pins, key)
            if value is not None:
                return value, where
        return None


def mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


def draft_plan(
    manifest: ModelManifest,
    facts: HardwareFacts,
    settings: PlannerSettings,
    footprint_of: Callable[[str], Footprint],
) -> RuntimePlan:
    """Decide everything that needs no measurement; raise PlanRefused if it cannot fit.

    `footprint_of(model_file)` measures the file the chosen backend will load.
    """
    pins = Pins(manifest.runtime, settings.pins)
    reasons: dict[str, str] = {}
    pinned: set[str] = set()

    def take_pin(key: str) -> Any:
        found = pins.get(key)
        if found is None:
            return None
        value, where = found
        pinned.add(key)
        shown = ", ".join(value) if isinstance(value, list) else value
        reasons[key] = f"{shown}: {where}"
        return value

    backend, model_file = _choose_backend(manifest, facts, reasons)
    providers = take_pin("providers")
    if providers is not None:
        providers = tuple(providers)
    elif backend == "onnx":
        providers = _choose_providers(facts, reasons)
    else:
        providers = ("cpu",)
        reasons["providers"] = "cpu: the TorchScript backend runs on the CPU"
    on_gpu = any(name in GPU_PROVIDERS for name in providers) and backend == "onnx"

    precision = take_pin("precision") or _choose_precision(
        backend, on_gpu, facts, settings, reasons
    )

    instances = take_pin("instance_count") or _choose_instances(on_gpu, facts, settings, reasons)
    intra = take_pin("intra_op_threads") or _choose_intra_threads(on_gpu, instances, facts, reasons)
    inter = take_pin("inter_op_threads")
    if inter is None:
        inter = 1
        reasons["inter_op_threads"] = "1: the backend runs each graph's nodes sequentially"

    batch = take_pin("max_batch_size")
    if batch is None:
        batch = _choose_batch(manifest, on_gpu, facts.cpu.compute_cores, settings, reasons)
    delay = take_pin("max_queue_delay_us")
    if delay is None:
        delay = _choose_delay(manifest, batch, settings, reasons)

    plan = RuntimePlan(
        backend=backend,
        model_file=model_file,
        providers=providers,
        precision=precision,
        intra_op_threads=intra,
        inter_op_threads=inter,
        max_batch_size=batch,
        max_queue_delay_us=delay,
        max_queue_size=manifest.batching.max_queue_size,
        instance_count=instances,
        reasons=reasons,
        pinned=frozenset(pinned),
    )
    return fit_memory(plan, manifest, facts, settings, footprint_of(model_file))


def _choose_backend(
    manifest: ModelManifest, facts: HardwareFacts, reasons: dict[str, str]
) -> tuple[str, str]:
    onnx_file = manifest.model_file if manifest.format == "onnx" else None
    onnx_file = onnx_file or next((name for name in manifest.files if name.endswith(".onnx")), None)
    torch_file = manifest.model_file if manifest.format == "torchscript" else None
    torch_file = torch_file or next(
        (name for name in manifest.files if name.endswith(TORCHSCRIPT_SUFFIXES)), None
    )
    onnxruntime_ok = bool(facts.onnx_providers)
    if onnx_file and onnxruntime_ok:
        also = (
            "; the version also has TorchScript, but ONNX runs without torch and has "
            "execution providers and int8"
            if torch_file
            else ""
        )
        reasons["backend"] = f"onnx: {onnx_file} with onnxruntime {facts.onnxruntime_version}{also}"
        return "onnx", onnx_file
    if torch_file and facts.torch_installed:
        why = "onnxruntime is not available" if onnx_file else "the only format in this version"
        reasons["backend"] = f"torchscript: {torch_file}, {why}"
        return "torchscript", torch_file
    have = ", ".join(name for name in (onnx_file, torch_file) if name) or "no model file"
    raise PlanRefused(
        f"{manifest.name}/{manifest.version}: has {have} but this device has "
        f"{'onnxruntime' if onnxruntime_ok else 'no onnxruntime'} and "
        f"{'torch' if facts.torch_installed else 'no torch'}"
    )


def _choose_providers(facts: HardwareFacts, reasons: dict[str, str]) -> tuple[str, ...]:
    offered = set(facts.onnx_providers)
    ordered = [name for name in PROVIDER_PREFERENCE if name in offered]
    gpu = facts.gpu
    gpu_offered = [name for name in ordered if name in GPU_PROVIDERS]
    if gpu_offered and gpu is None:
        ordered = [name for name in ordered if name not in GPU_PROVIDERS]
        reasons["providers"] = (
            f"{', '.join(ordered) or 'CPUExecutionProvider'}: onnxruntime offers "
            f"{', '.join(gpu_offered)} but no NVIDIA GPU was found"
        )
    elif gpu is not None and not gpu_offered:
        reasons["providers"] = (
            f"CPUExecutionProvider: {gpu.name} found, but this onnxruntime has no CUDA or "
            "TensorRT provider (install onnxruntime-gpu)"
        )
    elif gpu is not None:
        reasons["providers"] = f"{', '.join(ordered)}: fastest first, on {gpu.name}"
    else:
        reasons["providers"] = f"{', '.join(ordered) or 'CPUExecutionProvider'}: no GPU here"
    if "CPUExecutionProvider" not in ordered:
        ordered.append("CPUExecutionProvider")
    return tuple(ordered)


def _choose_precision(
    backend: str,
    on_gpu: bool,
    facts: HardwareFacts,
    settings: PlannerSettings,
    reasons: dict[str, str],
) -> str:
    if backend != "onnx":
        reasons["precision"] = "fp32: reduced precision is converted for ONNX models only"
        return "fp32"
    gpu = facts.gpu
    if on_gpu and gpu is not None:
        capability = gpu.compute_capability or "unknown"
        if gpu.fast_fp16 and settings.allow_fp16:
            reasons["precision"] = (
                f"fp16: {gpu.name} (compute capability {capability}) runs fp16 at full speed; "
                "pending the accuracy guard"
            )
            return "fp16"
        why = "fp16 is disabled by policy" if gpu.fast_fp16 else "no fast fp16"
        reasons["precision"] = f"fp32: {gpu.name} (compute capability {capability}): {why}"
        return "fp32"
    dot = [name for name in INT8_DOT_FEATURES if facts.cpu.has(name)]
    if dot and settings.allow_int8:
        reasons["precision"] = (
            f"int8: the CPU has {', '.join(dot)} for int8 dot products; pending the accuracy guard"
        )
        return "int8"
    if dot:
        reasons["precision"] = "fp32: int8 is disabled by policy"
    else:
        reasons["precision"] = (
            "fp32: no int8 dot-product instructions (VNNI, AMX, dotprod, i8mm), "
            "so int8 would not run faster"
        )
    return "fp32"


def _choose_instances(
    on_gpu: bool, facts: HardwareFacts, settings: PlannerSettings, reasons: dict[str, str]
) -> int:
    cores = facts.cpu.compute_cores
    if settings.policy == "throughput" and not on_gpu and cores >= TWO_INSTANCE_CORES:
        reasons["instance_count"] = f"2: throughput policy on {cores} cores, half each"
        return 2
    reasons["instance_count"] = (
        "1: one session keeps the GPU busy"
        if on_gpu
        else f"1: {settings.policy} policy on {cores} cores"
    )
    return 1


def _choose_intra_threads(
    on_gpu: bool, instances: int, facts: HardwareFacts, reasons: dict[str, str]
) -> int:
    cpu = facts.cpu
    cores = cpu.compute_cores
    if on_gpu:
        threads = min(GPU_HOST_THREADS, cores)
        reasons["intra_op_threads"] = f"{threads}: the GPU does the work; CPU threads feed it"
        return threads
    threads = max(1, cores // instances)
    limits = [f"{cpu.physical_cores} physical cores"] if cpu.physical_cores else []
    if cpu.logical_cores and cpu.physical_cores and cpu.logical_cores > cpu.physical_cores:
        limits.append("hyperthreads skipped")
    if cpu.affinity_cores is not None and cpu.affinity_cores < (cpu.logical_cores or 0):
        limits.append(f"affinity allows {cpu.affinity_cores}")
    if cpu.quota_cores is not None:
        limits.append(f"cgroup quota {cpu.quota_cores:g} CPUs")
    split = f", split over {instances} instances" if instances > 1 else ""
    reasons["intra_op_threads"] = f"{threads}: {cores} usable cores ({', '.join(limits)}){split}"
    return threads


def _choose_batch(
    manifest: ModelManifest,
    on_gpu: bool,
    cores: int,
    settings: PlannerSettings,
    reasons: dict[str, str],
) -> int:
    declared = manifest.batching.max_batch_size
    if declared == 0:
        reasons["max_batch_size"] = "0: the model does not batch (manifest max_batch_size 0)"
        return 0
    first_dim = manifest.inputs[0].shape[0] if manifest.inputs[0].shape else 1
    if isinstance(first_dim, int) and first_dim > 0:
        reasons["max_batch_size"] = f"{first_dim}: the model's batch dimension is fixed"
        return first_dim
    if settings.policy == "latency":
        reasons["max_batch_size"] = "1: latency policy, no request waits for others"
        return 1
    if settings.policy == "throughput":
        batch = max(declared, THROUGHPUT_BATCH_GPU if on_gpu else THROUGHPUT_BATCH_CPU)
        reasons["max_batch_size"] = (
            f"{batch}: throughput policy on the {'GPU' if on_gpu else 'CPU'}"
        )
        return batch
    if not on_gpu and declared > cores:
        # Measured (docs/benchmarks.md, planner): a CPU gains nothing from batches larger than
        # its core count; they only add queueing and spill activations out of cache.
        reasons["max_batch_size"] = (
            f"{cores}: balanced policy on the CPU caps the manifest's {declared} at one per core"
        )
        return cores
    reasons["max_batch_size"] = f"{declared}: balanced policy keeps the manifest's batching"
    return declared


def _choose_delay(
    manifest: ModelManifest, batch: int, settings: PlannerSettings, reasons: dict[str, str]
) -> int:
    if batch <= 1:
        reasons["max_queue_delay_us"] = "0: batches of one never wait"
        return 0
    delay = manifest.batching.max_queue_delay_us
    why = "the manifest's delay"
    if settings.policy == "throughput" and delay < THROUGHPUT_DELAY_US:
        delay, why = THROUGHPUT_DELAY_US, "throughput policy waits longer to fill batches"
    if settings.latency_budget_ms is not None:
        cap = int(settings.latency_budget_ms * 1000 / 4)
        if delay > cap:
            delay = cap
            why = f"capped at a quarter of the {settings.latency_budget_ms:g} ms latency budget"
    reasons["max_queue_delay_us"] = f"{delay}: {why}"
    return delay


def memory_available(
    plan: RuntimePlan, facts: HardwareFacts, settings: PlannerSettings
) -> tuple[int | None, str]:
    """Bytes the plan may use and a phrase saying where that number comes from."""
    gpu = facts.gpu
    on_gpu = plan.backend == "onnx" and any(name in GPU_PROVIDERS for name in plan.providers)
    free: int | None
    if on_gpu and gpu is not None and not gpu.integrated:
        free, where = gpu.memory_free_bytes, f"free on {gpu.name}"
    else:
        free = facts.memory.usable_bytes
        where = "free shared CPU/GPU memory" if facts.jetson else "free memory"
        if facts.memory.cgroup_limit_bytes is not None:
            where += f" (cgroup limit {mib(facts.memory.cgroup_limit_bytes)})"
    limit = int(free * settings.memory_headroom) if free is not None else None
    if limit is not None:
        where = f"{settings.memory_headroom:.0%} of {mib(free or 0)} {where}"
    if settings.memory_budget_mb is not None:
        budget = int(settings.memory_budget_mb * MIB)
        if limit is None or budget < limit:
            limit, where = budget, f"the {settings.memory_budget_mb:g} MiB memory budget"
    return limit, where


def fit_memory(
    plan: RuntimePlan,
    manifest: ModelManifest,
    facts: HardwareFacts,
    settings: PlannerSettings,
    footprint: Footprint,
) -> RuntimePlan:
    """Shrink the batch until weights + activations (+ a confined model's worker process)
    fit, or refuse with the numbers."""
    limit, where = memory_available(plan, facts, settings)
    reasons = dict(plan.reasons)
    precision, instances = plan.precision, plan.instance_count
    batch = plan.max_batch_size
    # One worker per version, whatever its instances: they share it.
    worker, found = process_bytes(plan.backend, facts.torch_worker_bytes)

    def needed(size: int) -> int:
        return footprint.needed(precision, size, instances) + worker

    def breakdown(size: int) -> str:
        per = f" x {instances} instances" if instances > 1 else ""
        process = f" + worker process {mib(worker)} ({found}, confined)" if worker else ""
        return (
            f"{mib(needed(size))} (weights {mib(footprint.weights_at(precision))} {precision} + "
            f"activations {mib(footprint.activations_at(precision, size))} for batch "
            f"{max(size, 1)}{per}{process})"
        )

    if limit is None:
        reasons["memory"] = f"needs {breakdown(batch)}; free memory is unknown, not checked"
        return replace(plan, reasons=reasons)
    if needed(batch) <= limit:
        reasons["memory"] = f"needs {breakdown(batch)}, within {mib(limit)} ({where})"
        return replace(plan, reasons=reasons)
    if needed(1) > limit:
        raise PlanRefused(
            f"{manifest.name}/{manifest.version}: needs {breakdown(1)} but only {mib(limit)} "
            f"may be used ({where})"
        )
    if "max_batch_size" in plan.pinned:
        raise PlanRefused(
            f"{manifest.name}/{manifest.version}: pinned batch {batch} needs {breakdown(batch)} "
            f"but only {mib(limit)} may be used ({where})"
        )
    wanted = batch
    while batch > 1 and needed(batch) > limit:
        batch //= 2
    reasons["max_batch_size"] = (
        f"{batch}: reduced from {wanted} so weights and activations fit in memory"
    )
    reasons["memory"] = f"needs {breakdown(batch)}, within {mib(limit)} ({where})"
    return replace(plan, max_batch_size=batch, reasons=reasons)
