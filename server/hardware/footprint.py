"""How much memory a model takes: weights at a precision, plus activations per sample, plus
for a TorchScript model the worker process it is confined in.

Activations are measured on the ONNX graph: shapes come from onnx shape inference with every
symbolic dimension set to 1, and the peak is the largest set of intermediate tensors alive at
once when the nodes run in graph order (what an arena that frees tensors after their last use
needs). TorchScript files have no graph to read; their estimate is a stated rule of thumb.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from server.manifest import ModelManifest

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# Bytes per weight relative to fp32 for each precision.
WEIGHT_SCALE = {"fp32": 1.0, "fp16": 0.5, "int8": 0.25}
# Activations: int8 QDQ graphs still hold many fp32 tensors, so only fp16 halves them.
ACTIVATION_SCALE = {"fp32": 1.0, "fp16": 0.5, "int8": 1.0}
# TorchScript without a graph to measure: activations as a multiple of the input size.
TORCHSCRIPT_ACTIVATION_FACTOR = 32
# A TorchScript version runs in its own confined worker (server/models/backends/
# confined_torchscript.py): Python, numpy and libtorch, beside its weights and activations.
# Counted until a worker of this server has reported its own (HardwareFacts.torch_worker_bytes:
# 229 MiB here, before its model and its first run). Measured: resident set of a worker serving
# a one-operator model (`x + 1`) after its first run, 235 MiB (torch 2.13 CPU, Python 3.11,
# x86_64; psutil memory_full_info). Its USS is 154 MiB: libtorch's pages are shared between
# workers, so both numbers over-count the second worker on.
CONFINED_WORKER_BYTES = 235 << 20


def process_bytes(backend: str, measured_worker: int | None) -> tuple[int, str]:
    """Memory a version of `backend` costs beyond its weights and activations, and how it was
    found: a worker's own report once one has started (`measured_worker`), else the constant."""
    if backend != "torchscript":
        return 0, ""
    if measured_worker:
        return measured_worker, "measured"
    return CONFINED_WORKER_BYTES, "estimated"


@dataclass(frozen=True)
class Footprint:
    weights_bytes: int  # at fp32
    activation_bytes_per_sample: int  # at fp32
    method: str  # how the numbers were found, for the plan's reasons

    def weights_at(self, precision: str) -> int:
        return int(self.weights_bytes * WEIGHT_SCALE.get(precision, 1.0))

    def activations_at(self, precision: str, batch: int) -> int:
        scale = ACTIVATION_SCALE.get(precision, 1.0)
        return int(self.activation_bytes_per_sample * scale * max(1, batch))

    def needed(self, precision: str, batch: int, instances: int) -> int:
        return instances * (self.weights_at(precision) + self.activations_at(precision, batch))


def stored_footprint(model_sha256: str, cache_dir: Path) -> Footprint | None:
    try:
        path = cache_dir / f"footprint-{model_sha256[:16]}.json"
        return Footprint(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def estimate_footprint(model_path: Path, manifest: ModelManifest) -> Footprint:
    """Without reading the graph (no onnx import, milliseconds): the file size as weights and
    a multiple of the input as activations. The conversion child measures the real one."""
    input_bytes = sum(_spec_bytes(spec.fixed_dims(), spec.dtype) for spec in manifest.inputs)
    return Footprint(
        weights_bytes=model_path.stat().st_size,
        activation_bytes_per_sample=input_bytes * TORCHSCRIPT_ACTIVATION_FACTOR,
        method=(
            f"estimated: file size, activations {TORCHSCRIPT_ACTIVATION_FACTOR}x the input "
            "(not measured yet)"
        ),
    )


def cached_footprint(
    model_path: Path, manifest: ModelManifest, model_sha256: str, cache_dir: Path
) -> Footprint:
    """`measure_footprint`, remembered on disk by sha256: shape inference imports sympy and
    takes seconds on a small board, and the answer never changes for the same file."""
    cache_file = cache_dir / f"footprint-{model_sha256[:16]}.json"
    try:
        return Footprint(**json.loads(cache_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        pass
    footprint = measure_footprint(model_path, manifest)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(asdict(footprint)) + "\n", encoding="utf-8")
    except OSError as exc:  # a read-only repository only loses the cache
        logger.info("cannot cache the footprint of %s: %s", model_path, exc)
    return footprint


def measure_footprint(model_path: Path, manifest: ModelManifest) -> Footprint:
    if model_path.suffix == ".onnx":
        return _onnx_footprint(model_path)
    input_bytes = sum(_spec_bytes(spec.fixed_dims(), spec.dtype) for spec in manifest.inputs)
    return Footprint(
        weights_bytes=model_path.stat().st_size,
        activation_bytes_per_sample=input_bytes * TORCHSCRIPT_ACTIVATION_FACTOR,
        method=f"file size; activations estimated as {TORCHSCRIPT_ACTIVATION_FACTOR}x the input",
    )


def _spec_bytes(dims: list[int], dtype: str) -> int:
    count = int(np.prod([dim if dim > 0 else 1 for dim in dims])) if dims else 1
    return count * np.dtype(dtype).itemsize


def _infer_shapes_at_batch_one(model: onnx.ModelProto, model_path: Path) -> onnx.GraphProto:
    """The graph with every tensor's shape, symbolic dimensions set to 1.

    onnxruntime's symbolic shape inference folds the shape arithmetic exporters emit (dynamic
    padding, reshapes) that plain onnx inference leaves unknown.
    """
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for graph_input in fixed.graph.input:
        for dim in graph_input.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred: onnx.ModelProto = SymbolicShapeInference.infer_shapes(fixed, auto_merge=True)
        return inferred.graph
    except Exception as exc:  # any failure only makes the activation estimate smaller
        logger.warning("%s: symbolic shape inference failed (%s)", model_path, exc)
    try:
        return onnx.shape_inference.infer_shapes(fixed).graph
    except Exception as exc:
        logger.warning("%s: shape inference failed (%s); activations unknown", model_path, exc)
        return fixed.graph


def _onnx_footprint(model_path: Path) -> Footprint:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    weights = sum(numpy_helper.to_array(init).nbytes for init in graph.initializer)
    # Exporters (paddle2onnx, say) often store weights as Constant nodes, not initializers.
    weights += sum(
        numpy_helper.to_array(attribute.t).nbytes
        for node in graph.node
        if node.op_type == "Constant"
        for attribute in node.attribute
        if attribute.name == "value"
    )
    # Weights stored where neither is read (subgraphs, odd exporters): the file is the floor.
    weights = max(weights, model_path.stat().st_size // 2)
    inferred = _infer_shapes_at_batch_one(model, model_path)

    sizes: dict[str, int] = {}
    for info in [*inferred.input, *inferred.value_info, *inferred.output]:
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = [dim.dim_value if dim.HasField("dim_value") else 1 for dim in tensor.shape.dim]
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        except (KeyError, TypeError):
            itemsize = 4
        sizes[info.name] = int(np.prod(dims)) * itemsize if dims else itemsize

    last_use: dict[str, int] = {}
    for position, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = position
    outputs = {info.name for info in graph.output}
    live = {info.name for info in graph.input if info.name not in initializers}
    peak = sum(sizes.get(name, 0) for name in live)
    for position, node in enumerate(graph.node):
        live.update(name for name in node.output if name)
        peak = max(peak, sum(sizes.get(name, 0) for name in live))
        live = {name for name in live if name in outputs or last_use.get(name, -1) > position}
    return Footprint(
        weights_bytes=int(weights),
        activation_bytes_per_sample=int(peak),
        method="ONNX initializers; peak live activations from shape inference",
    )
