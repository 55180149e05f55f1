"""Small builders for KServe requests with our generated stubs."""

from __future__ import annotations

import numpy as np

from protos.inference import grpc_service_pb2 as kserve
from server.models.tensors import kserve_datatype


def infer_request(
    model: str,
    array: np.ndarray,
    *,
    input_name: str = "input",
    request_id: str = "",
    version: str = "",
    classification: int = 0,
    output: str = "logits",
) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    request.inputs.add(
        name=input_name, datatype=kserve_datatype(str(array.dtype)), shape=list(array.shape)
    )
    request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    if classification:
        wanted = request.outputs.add(name=output)
        wanted.parameters["classification"].int64_param = classification
    return request


def output_array(response: kserve.ModelInferResponse, index: int = 0) -> np.ndarray:
    tensor = response.outputs[index]
    dtype = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64}[tensor.datatype]
    return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(tensor.shape)


def bytes_elements(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        items.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return items
