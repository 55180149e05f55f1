"""KServe v2 HTTP bodies <-> domain: JSON tensors and the binary-tensor-data extension.

Metadata, config and statistics reuse the gRPC converters and print the same messages as JSON,
so both transports describe a model identically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format

from server.core import ModelInfo
from server.errors import InvalidInput
from server.grpc_api import convert_kserve as convert
from server.models.stats import ModelStats
from server.models.tensors import array_from_bytes, numpy_dtype
from server.models.types import InferRequest, InferResponse, RequestedOutput


@dataclass(frozen=True)
class ParsedInfer:
    request: InferRequest
    # Outputs to send as binary blobs after the JSON header.
    binary: frozenset[str]


def _message(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=False
    )
    return result


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    metadata = convert.model_metadata_to_pb(info)
    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in metadata.inputs
        ],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in metadata.outputs
        ],
    }


def model_config(info: ModelInfo) -> dict[str, Any]:
    return _message(convert.model_config_to_pb(info))


def statistics(stats: Iterable[ModelStats]) -> dict[str, Any]:
    return _message(convert.statistics_to_pb(stats))


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length!r} is not a number"
            ) from None
        if not 0 <= length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {length} exceeds the body ({len(body)} bytes)"
            )
        header, blobs = body[:length], body[length:]
    else:
        header, blobs = body, b""
    try:
        parsed = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"inference request is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("inference request must be a JSON object")
    return parsed, blobs


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: parameters must be an object")
    return parameters


def infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str
) -> ParsedInfer:
    parsed, blobs = _split_body(body, header_length)
    inputs = parsed.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(f"request for model {model_name!r} has no inputs")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("every input needs a name")
        name = item["name"]
        if name in arrays:
            raise InvalidInput(f"input {name!r} appears twice")
        shape = item.get("shape")
        datatype = item.get("datatype")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise InvalidInput(f"input {name!r}: shape must be a list of integers")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input {name!r}: datatype is required")
        size = _parameters(item, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blobs):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size} exceeds the binary data sent"
                )
            arrays[name] = array_from_bytes(
                blobs[offset : offset + size], datatype, shape, tensor=name
            )
            offset += size
        else:
            arrays[name] = _array_from_json(name, item.get("data"), datatype, shape)
    if offset != len(blobs):
        raise InvalidInput(f"{len(blobs) - offset} bytes of binary data belong to no input")
    default_binary = bool(_parameters(parsed, "request").get("binary_data_output", False))
    outputs, binary = [], set()
    for item in parsed.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("every requested output needs a name")
        parameters = _parameters(item, f"output {item['name']!r}")
        classification = parameters.get("classification", 0)
        if not isinstance(classification, int) or classification < 0:
            raise InvalidInput(f"output {item['name']!r}: classification must be an integer >= 0")
        outputs.append(RequestedOutput(item["name"], classification))
        if parameters.get("binary_data", default_binary):
            binary.add(item["name"])
    request_id = parsed.get("id", "")
    request = InferRequest(
        model_name=model_name, model_version=model_version,
        id=request_id if isinstance(request_id, str) else str(request_id),
        inputs=arrays, outputs=tuple(outputs),
    )  # fmt: skip
    if default_binary and not outputs:
        binary = {"*"}
    return ParsedInfer(request, frozenset(binary))


def _array_from_json(name: str, data: Any, datatype: str, shape: list[int]) -> np.ndarray:
    dtype = numpy_dtype(datatype, tensor=name)
    if data is None:
        raise InvalidInput(f"input {name!r} has neither data nor binary_data_size")
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError):
        raise InvalidInput(f"input {name!r}: data is not a list of {datatype} values") from None
    expected = int(np.prod(shape, dtype=np.int64))
    if any(dim < 0 for dim in shape) or array.size != expected:
        raise InvalidInput(f"input {name!r}: {array.size} values do not match shape {shape}")
    return array.reshape(shape)


def infer_response(response: InferResponse, binary: frozenset[str]) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary blobs follow it."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in response.outputs:
        tensor, raw = convert.output_to_pb(output)
        entry: dict[str, Any] = {
            "name": output.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
        }  # fmt: skip
        if output.name in binary or "*" in binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif output.is_bytes:
            entry["data"] = [
                item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
                for item in output.array.reshape(-1)
            ]
        else:
            entry["data"] = output.array.reshape(-1).tolist()
        outputs.append(entry)
    header = json.dumps({
        "model_name": response.model_name, "model_version": response.model_version,
        "id": response.id, "outputs": outputs,
    }).encode()  # fmt: skip
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
