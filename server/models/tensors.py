"""Tensor dtypes and shape checks shared by every transport.

KServe v2 names dtypes FP32, UINT8, ...; the manifest and numpy say float32, uint8. This is the
one table between them, and the one place that decides whether an array fits a TensorSpec.
"""

from __future__ import annotations

import math

import numpy as np

from server.errors import InvalidInput
from server.manifest import TensorSpec

KSERVE_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_KSERVE = {numpy_name: kserve for kserve, numpy_name in KSERVE_TO_NUMPY.items()}

# Beyond any model served here; numpy itself stops at 64 dimensions.
MAX_RANK = 16


def element_count(shape: list[int], *, tensor: str) -> int:
    """Elements in `shape`, in Python integers (no wrap-around); refuses shapes no tensor has."""
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input {tensor!r}: rank {len(shape)} exceeds the limit of {MAX_RANK}")
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {tensor!r}: shape {shape} has a negative dimension")
    count = math.prod(shape)
    if count == 0:
        raise InvalidInput(f"input {tensor!r}: shape {shape} holds no elements")
    return count


def kserve_datatype(dtype: str) -> str:
    return NUMPY_TO_KSERVE[dtype]


def numpy_dtype(datatype: str, *, tensor: str) -> np.dtype[np.generic]:
    try:
        return np.dtype(KSERVE_TO_NUMPY[datatype])
    except KeyError:
        known = ", ".join(sorted(KSERVE_TO_NUMPY))
        raise InvalidInput(
            f"input {tensor!r}: datatype {datatype!r} is not supported (use one of {known})"
        ) from None


def array_from_bytes(
    raw: bytes, datatype: str, shape: list[int], *, tensor: str
) -> np.ndarray[tuple[int, ...], np.dtype[np.generic]]:
    """Interpret little-endian row-major bytes; the byte length must match the shape exactly."""
    dtype = numpy_dtype(datatype, tensor=tensor).newbyteorder("<")
    expected = element_count(shape, tensor=tensor) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input {tensor!r}: {len(raw)} bytes do not match shape {shape} of {datatype} "
            f"({expected} bytes expected)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def check_tensor(array: np.ndarray, spec: TensorSpec, *, max_batch_size: int) -> None:
    """Raise InvalidInput unless `array` fits `spec` (dtype, rank, every fixed dimension)."""
    if array.dtype != np.dtype(spec.dtype):
        raise InvalidInput(
            f"input {spec.name!r}: dtype {kserve_datatype(str(array.dtype)) if str(array.dtype) in NUMPY_TO_KSERVE else array.dtype} "  # noqa: E501
            f"does not match the model's {kserve_datatype(spec.dtype)}"
        )
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"input {spec.name!r}: shape {list(array.shape)} has rank {array.ndim}, "
            f"the model expects rank {len(spec.shape)} {display_shape(spec)}"
        )
    for axis, (actual, expected) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if isinstance(expected, int) and expected >= 0 and actual != expected:
            raise InvalidInput(
                f"input {spec.name!r}: shape {list(array.shape)} does not match "
                f"{display_shape(spec)} at dimension {axis}"
            )
    if max_batch_size > 0 and array.shape[0] > max_batch_size:
        raise InvalidInput(
            f"input {spec.name!r}: batch of {array.shape[0]} exceeds the model's "
            f"max batch size {max_batch_size}"
        )
    if max_batch_size > 0 and array.shape[0] == 0:
        raise InvalidInput(f"input {spec.name!r}: empty batch")


def display_shape(spec: TensorSpec) -> str:
    return "[" + ", ".join(str(dim) for dim in spec.shape) + "]"
