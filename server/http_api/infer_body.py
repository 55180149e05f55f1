"""KServe v2 HTTP infer bodies <-> numpy, strictly: JSON tensors and the binary-tensor extension.

Pure functions of bytes and arrays (numpy, json and the dtype table only), so the HTTP transport
can run them in a parse process (`server.http_api.parse_pool`) as well as on the event loop for
small bodies. Every malformed body raises InvalidInput, never anything else: a value out of its
datatype's range, a shape whose product overflows, JSON nested too deeply, an integer of 5,000
digits, a body that is not UTF-8.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import InvalidInput
from server.kserve_parameters import refuse_shared_memory
from server.models.tensors import array_from_bytes, element_count, numpy_dtype

# More inputs or outputs than any model has (the gRPC converter's bound too).
MAX_TENSORS = 64
# Nesting of a request: {inputs: [{data: [[...]]}]} with data up to rank 16, and some slack.
MAX_DEPTH = 32
# Element kinds numpy infers from JSON values that each datatype family accepts.
_ACCEPTED_KINDS = {
    "b": frozenset("b"),
    "i": frozenset("iu"),
    "u": frozenset("iu"),
    "f": frozenset("iuf"),
}


@dataclass(frozen=True)
class WantedOutput:
    name: str
    classification: int
    binary: bool


@dataclass(frozen=True)
class ParsedInfer:
    """A checked infer request, before the transport names its model."""

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[WantedOutput, ...]
    # Every output in binary when the request names none (`binary_data_output`).
    all_binary: bool
    # The request's own "parameters" (timeout, priority, ...), checked by the transport.
    parameters: dict[str, Any]


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary blobs that follow it (Inference-Header-Content-Length)."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length[:40]!r} is not a number"
        ) from None
    if not 0 <= length <= len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} does not fit the body ({len(body)} bytes)"
        )
    return body[:length], body[length:]


def load_json(data: bytes, what: str) -> Any:
    """Strict UTF-8 JSON, bounded in depth; every failure is InvalidInput."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not JSON: {exc.msg} at byte {exc.pos}") from None
    except RecursionError:
        raise InvalidInput(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        raise InvalidInput(f"{what} is not usable JSON: {str(exc)[:120]}") from None
    if _depth(value) > MAX_DEPTH:
        raise InvalidInput(f"{what} nests deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any, limit: int = MAX_DEPTH + 1) -> int:
    """Nesting depth of containers, stopping at `limit`."""
    if isinstance(value, dict):
        if limit <= 1:
            return 1
        return 1 + max((_depth(item, limit - 1) for item in value.values()), default=0)
    if isinstance(value, list):
        # A list of numbers is one level: if containers follow a number, numpy refuses the
        # list as ragged anyway, so tensor data is never walked value by value.
        if limit <= 1 or not value or not isinstance(value[0], (list, dict)):
            return 1
        return 1 + max(_depth(item, limit - 1) for item in value)
    return 0


def parameters_of(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    parameters = item.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: parameters must be a JSON object")
    return parameters


def is_int(value: Any) -> bool:
    """A JSON integer (JSON true is not one, though Python's bool is an int)."""
    return type(value) is int


def parse_infer(header: bytes, blobs: bytes) -> ParsedInfer:
    parsed = load_json(header, "inference request")
    if not isinstance(parsed, dict):
        raise InvalidInput("inference request must be a JSON object")
    inputs = parsed.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inference request has no inputs")
    if len(inputs) > MAX_TENSORS:
        raise InvalidInput(f"inference request has {len(inputs)} inputs (at most {MAX_TENSORS})")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("every input needs a name")
        name = item["name"]
        if name in arrays:
            raise InvalidInput(f"input {name!r} appears twice")
        shape, datatype = item.get("shape"), item.get("datatype")
        if not isinstance(shape, list) or not all(is_int(dim) for dim in shape):
            raise InvalidInput(f"input {name!r}: shape must be a list of integers")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input {name!r}: datatype must be a string")
        parameters = parameters_of(item, f"input {name!r}")
        refuse_shared_memory(name, parameters)
        size = parameters.get("binary_data_size")
        if size is not None:
            if not is_int(size) or size < 0 or offset + size > len(blobs):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {str(size)[:40]} does not fit the "
                    f"{len(blobs) - offset} bytes of binary data left"
                )
            arrays[name] = array_from_bytes(
                blobs[offset : offset + size], datatype, shape, tensor=name
            )
            offset += size
        else:
            arrays[name] = array_from_json(name, item.get("data"), datatype, shape)
    if offset != len(blobs):
        raise InvalidInput(f"{len(blobs) - offset} bytes of binary data belong to no input")
    parameters = parameters_of(parsed, "request")
    all_binary = parameters.get("binary_data_output", False)
    if not isinstance(all_binary, bool):
        raise InvalidInput("request parameter binary_data_output must be true or false")
    request_id = parsed.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("request id must be a string")
    return ParsedInfer(
        id=request_id,
        inputs=arrays,
        outputs=_wanted_outputs(parsed.get("outputs"), all_binary),
        all_binary=all_binary,
        parameters=parameters,
    )


def _wanted_outputs(outputs: Any, all_binary: bool) -> tuple[WantedOutput, ...]:
    if outputs is None:
        return ()
    if not isinstance(outputs, list):
        raise InvalidInput("outputs must be a list")
    if len(outputs) > MAX_TENSORS:
        raise InvalidInput(f"request asks for {len(outputs)} outputs (at most {MAX_TENSORS})")
    wanted = []
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("every requested output needs a name")
        name = item["name"]
        parameters = parameters_of(item, f"output {name!r}")
        refuse_shared_memory(name, parameters)
        classification = parameters.get("classification", 0)
        if not is_int(classification) or classification < 0:
            raise InvalidInput(f"output {name!r}: classification must be an integer >= 0")
        binary = parameters.get("binary_data", all_binary)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output {name!r}: binary_data must be true or false")
        wanted.append(WantedOutput(name, classification, binary))
    return tuple(wanted)


def array_from_json(name: str, data: Any, datatype: str, shape: list[int]) -> np.ndarray:
    """A JSON `data` list (flat or nested, row-major) as an array of `datatype`, exactly:
    values out of the datatype's range are refused, never wrapped or rounded to infinity."""
    dtype = numpy_dtype(datatype, tensor=name)
    expected = element_count(shape, tensor=name)
    if data is None:
        raise InvalidInput(f"input {name!r} has neither data nor binary_data_size")
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input {name!r}: data is not a regular list of numbers") from None
    if values.size != expected:
        raise InvalidInput(f"input {name!r}: {values.size} values do not match shape {shape}")
    accepted = _ACCEPTED_KINDS.get(dtype.kind, frozenset())
    if values.dtype.kind not in accepted:
        kind = {"f": "non-integer", "U": "string", "O": "out-of-range", "b": "boolean"}.get(
            values.dtype.kind, "unusable"
        )
        raise InvalidInput(f"input {name!r}: {kind} values in data for {datatype}")
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)  # type: ignore[type-var]  # an integer dtype, checked above
        if values.size and (values.min() < limits.min or values.max() > limits.max):
            raise InvalidInput(
                f"input {name!r}: values outside the {datatype} range [{limits.min}, {limits.max}]"
            )
        return values.astype(dtype).reshape(shape)
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            converted = values.astype(dtype)
        if not np.array_equal(np.isfinite(converted), np.isfinite(values)):
            raise InvalidInput(f"input {name!r}: values outside the {datatype} range")
        return converted.reshape(shape)
    return values.astype(dtype).reshape(shape)


# ---------------------------------------------------------------- responses


@dataclass(frozen=True)
class OutputEntry:
    """One output of a response header: its JSON `data` values, or the size of its blob."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | None = None
    binary_size: int | None = None


def json_data(name: str, array: np.ndarray) -> list[Any]:
    """An output's values as JSON can carry them; NaN and Infinity cannot be: they are refused
    with the way out (binary data carries IEEE values exactly)."""
    if array.dtype == np.dtype(object):
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1)
        ]
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        raise InvalidInput(
            f"output {name!r} holds NaN or Infinity, which JSON cannot carry: ask for it as "
            'binary data (output parameter "binary_data": true)'
        )
    values: list[Any] = array.reshape(-1).tolist()
    return values


def encode_header(
    model_name: str, model_version: str, request_id: str, entries: list[OutputEntry]
) -> bytes:
    outputs = []
    for entry in entries:
        item: dict[str, Any] = {
            "name": entry.name,
            "datatype": entry.datatype,
            "shape": entry.shape,
        }
        if entry.binary_size is not None:
            item["parameters"] = {"binary_data_size": entry.binary_size}
        else:
            assert entry.values is not None
            item["data"] = json_data(entry.name, entry.values)
        outputs.append(item)
    body = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request_id:
        body["id"] = request_id
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def json_value_count(entries: list[OutputEntry]) -> int:
    return sum(math.prod(entry.shape) for entry in entries if entry.values is not None)
