"""Drop-in ONNX models, as in Triton: a manifest completed from the model file itself.

`<repository>/<name>/<version>/model.onnx` without a manifest is served with the manifest this
module derives: the graph's inputs and outputs with their dtypes and dynamic dimensions, the
sha256 of every file (computed at load), batching when every tensor's first dimension is
dynamic, and the `raw` postprocess. `edgefleet model init` writes the same manifest to disk
for editing, optionally with a preprocess and postprocess.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    # Imported where used: a server that loads only manifested models never imports onnx.
    import onnx

DROPIN_FILENAME = "model.onnx"
# Batch size for drop-in models whose tensors all start with a dynamic dimension.
DROPIN_MAX_BATCH = 8


def _dynamic(dim: Dim) -> bool:
    return not isinstance(dim, int) or dim == -1


def _dims(value_info: onnx.ValueInfoProto) -> list[Dim]:
    dims: list[Dim] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(str(dim.dim_param))
        else:
            dims.append(-1)
    return dims


def _spec(value_info: onnx.ValueInfoProto, where: str) -> TensorSpec:
    from onnx import helper

    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        raise InvalidManifest(f"{where}: tensor {value_info.name!r} is not a plain tensor")
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except (KeyError, ValueError):
        raise InvalidManifest(
            f"{where}: tensor {value_info.name!r} has ONNX element type {tensor_type.elem_type}, "
            "which edgefleet does not serve"
        ) from None
    try:
        return TensorSpec(name=value_info.name, dtype=dtype, shape=_dims(value_info))
    except ValueError:
        raise InvalidManifest(
            f"{where}: tensor {value_info.name!r} has dtype {dtype}, which edgefleet does not serve"
        ) from None


def onnx_metadata(model_path: Path) -> dict[str, str]:
    """The model's metadata_props (PaddleOCR keeps its character list there)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def manifest_from_onnx(
    version_dir: Path,
    *,
    model_file: str = DROPIN_FILENAME,
    preprocess: Preprocess | None = None,
    postprocess: Postprocess | None = None,
    extra: dict[str, Any] | None = None,
) -> ModelManifest:
    """Complete a manifest from `version_dir/model_file`; blocking (reads and hashes files)."""
    import onnx

    where = f"{version_dir.parent.name}/{version_dir.name}"
    path = version_dir / model_file
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise InvalidManifest(f"{where}: no manifest and no {model_file}") from None
    except Exception as exc:  # onnx raises DecodeError and friends
        raise InvalidManifest(
            f"{where}: {model_file} is not a readable ONNX model ({exc})"
        ) from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_spec(vi, where) for vi in model.graph.input if vi.name not in initializers]
    outputs = [_spec(vi, where) for vi in model.graph.output]
    batching = all(spec.shape and _dynamic(spec.shape[0]) for spec in [*inputs, *outputs])
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
        "description": f"completed from {model_file} (producer {model.producer_name or '?'})",
        "provenance": {"manifest": "completed from the ONNX graph by edgefleet"},
    }
    fields.update(extra or {})
    try:
        return ModelManifest(**fields)
    except ValueError as exc:
        raise InvalidManifest(f"{where}: {exc}") from None
