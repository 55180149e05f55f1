"""Drop-in ONNX models, as in Triton: a manifest completed from the model file itself.

`<repository>/<name>/<version>/model.onnx` without a manifest is served with the manifest this
module derives: the graph's inputs and outputs with their dtypes and dynamic dimensions, the
sha256 of every file (computed at load), batching when every tensor's first dimension is
dynamic, and the `raw` postprocess; or, for a YOLO detector whose metadata says so
(`server.models.ultralytics`), letterbox preprocessing, the `yolo` postprocess and its class
names. `edgefleet model init` writes the same manifest to disk for editing, optionally with a
preprocess and postprocess of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import InvalidManifest
from server.manifest import (
    Batching,
    Dim,
    ModelManifest,
    Postprocess,
    Preprocess,
    TensorSpec,
    hash_directory,
)
from server.models.ultralytics import yolo_sections

if TYPE_CHECKING:
    import onnxruntime

DROPIN_FILENAME = "model.onnx"
# Batch size for drop-in models whose tensors all start with a dynamic dimension.
DROPIN_MAX_BATCH = 8
# onnxruntime's tensor type names ("tensor(float)") to numpy dtype names.
_ORT_DTYPES = {
    "float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
}  # fmt: skip
_TENSOR_TYPE = re.compile(r"^tensor\((\w+)\)$")


def _dynamic(dim: Dim) -> bool:
    return not isinstance(dim, int) or dim == -1


def _dims(shape: list[Any]) -> list[Dim]:
    """onnxruntime's shape (ints, names of symbolic dimensions, None) as manifest dims."""
    dims: list[Dim] = []
    for dim in shape:
        if isinstance(dim, int) and dim > 0 or isinstance(dim, str) and dim:
            dims.append(dim)
        else:
            dims.append(-1)
    return dims


def _spec(node: Any, where: str) -> TensorSpec:
    match = _TENSOR_TYPE.match(node.type)
    if match is None:
        raise InvalidManifest(f"{where}: tensor {node.name!r} is not a plain tensor ({node.type})")
    dtype = _ORT_DTYPES.get(match.group(1))
    if dtype is None:
        raise InvalidManifest(
            f"{where}: tensor {node.name!r} has ONNX element type {match.group(1)}, "
            "which edgefleet does not serve"
        )
    try:
        return TensorSpec(name=node.name, dtype=dtype, shape=_dims(list(node.shape)))
    except ValueError:
        raise InvalidManifest(
            f"{where}: tensor {node.name!r} has dtype {dtype}, which edgefleet does not serve"
        ) from None


def _read_graph(model_path: Path) -> onnxruntime.InferenceSession:
    """The model opened by onnxruntime with no graph optimisation, for its inputs, outputs and
    metadata: the serving process never imports the onnx package (the `int8` extra)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def onnx_metadata(model_path: Path) -> dict[str, str]:
    """The model's metadata_props (PaddleOCR keeps its character list there)."""
    metadata: dict[str, str] = dict(_read_graph(model_path).get_modelmeta().custom_metadata_map)
    return metadata


def manifest_from_onnx(
    version_dir: Path,
    *,
    model_file: str = DROPIN_FILENAME,
    preprocess: Preprocess | None = None,
    postprocess: Postprocess | None = None,
    extra: dict[str, Any] | None = None,
) -> ModelManifest:
    """Complete a manifest from `version_dir/model_file`; blocking (reads and hashes files).
    Without `preprocess` and `postprocess`, a YOLO detector's metadata supplies both."""
    where = f"{version_dir.parent.name}/{version_dir.name}"
    path = version_dir / model_file
    if not path.is_file():
        raise InvalidManifest(f"{where}: no manifest and no {model_file}")
    try:
        session = _read_graph(path)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        reason = str(exc).splitlines()[0][:200].replace(str(path), model_file)
        raise InvalidManifest(
            f"{where}: {model_file} is not a readable ONNX model ({reason})"
        ) from None
    # onnxruntime lists graph inputs without the initializers some exporters also list there.
    inputs = [_spec(node, where) for node in session.get_inputs()]
    outputs = [_spec(node, where) for node in session.get_outputs()]
    meta = session.get_modelmeta()
    producer = meta.producer_name
    metadata: dict[str, str] = dict(meta.custom_metadata_map)
    del session
    batching = all(spec.shape and _dynamic(spec.shape[0]) for spec in [*inputs, *outputs])
    description = f"completed from {model_file} (producer {producer or '?'})"
    provenance: dict[str, Any] = {"manifest": "completed from the ONNX graph by edgefleet"}
    if preprocess is None and postprocess is None:
        detector = yolo_sections(metadata, inputs, outputs, where)
        if detector is not None:
            preprocess, postprocess = detector.preprocess, detector.postprocess
            description = f"{detector.description}, completed from {model_file}"
            provenance = {
                "manifest": "completed from the ONNX graph and its YOLO metadata by edgefleet",
                "onnx_metadata": detector.provenance,
            }
    fields: dict[str, Any] = {
        "name": version_dir.parent.name,
        "version": version_dir.name,
        "format": "onnx",
        "model_file": model_file,
        "inputs": inputs,
        "outputs": outputs,
        "preprocess": preprocess,
        "postprocess": postprocess or Postprocess(),
        "batching": Batching(max_batch_size=DROPIN_MAX_BATCH if batching else 0),
        "files": hash_directory(version_dir),
        "description": description,
        "provenance": provenance,
    }
    fields.update(extra or {})
    try:
        return ModelManifest(**fields)
    except ValueError as exc:
        raise InvalidManifest(f"{where}: {exc}") from None
