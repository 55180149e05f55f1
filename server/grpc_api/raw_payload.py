"""A KServe request's raw_input_contents refused for its size before any of it is copied.

Reading an entry of a repeated bytes field copies it (upb hands out a new bytes object), so a
30 MB payload declared as a 600 KB input was copied once more only to be refused: a fourth
copy of the request beside gRPC's buffer, the bytes handed to the parser and the parsed
message. The wire format gives a lone entry's exact size from sizes protobuf already knows:
the message's ByteSize less every other field's encoded size.
"""

from __future__ import annotations

import math

import numpy as np

from protos.inference import grpc_service_pb2 as kserve
from server.errors import InvalidInput
from server.models.tensors import KSERVE_TO_NUMPY, MAX_RANK


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _field_size(payload: int) -> int:
    """A length-delimited field with a one-byte tag (field numbers below 16)."""
    return 1 + _varint_size(payload) + payload


def lone_raw_size(request: kserve.ModelInferRequest) -> int | None:
    """The size of the only raw_input_contents entry, computed without reading it; None when
    there is not exactly one, or the arithmetic does not close (fields this server's proto
    does not know)."""
    if len(request.raw_input_contents) != 1:
        return None
    rest = sum(
        _field_size(len(text.encode()))
        for text in (request.model_name, request.model_version, request.id)
        if text
    )
    for key, value in request.parameters.items():
        rest += _field_size(_field_size(len(key.encode())) + _field_size(value.ByteSize()))
    rest += sum(_field_size(tensor.ByteSize()) for tensor in request.inputs)
    rest += sum(_field_size(tensor.ByteSize()) for tensor in request.outputs)
    framed = request.ByteSize() - rest  # tag, length and the entry itself
    for length_bytes in range(1, 6):
        size = framed - 1 - length_bytes
        if size >= 0 and _varint_size(size) == length_bytes:
            return size
    return None


def refuse_oversized(request: kserve.ModelInferRequest) -> None:
    """Raise the error `array_from_bytes` would, before the payload is copied, when a request's
    lone raw input carries more bytes than its shape and datatype declare."""
    if len(request.inputs) != 1 or request.inputs[0].HasField("contents"):
        return
    tensor = request.inputs[0]
    dtype = KSERVE_TO_NUMPY.get(tensor.datatype)
    shape = list(tensor.shape)
    if dtype is None or len(shape) > MAX_RANK or any(dim <= 0 for dim in shape):
        return  # the usual checks name what is wrong, in their order
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    carried = lone_raw_size(request)
    if carried is not None and carried > expected:
        raise InvalidInput(
            f"input {tensor.name!r}: {carried} bytes do not match shape {shape} of "
            f"{tensor.datatype} ({expected} bytes expected)"
        )
