"""A ModelInfer request whose lone raw input carries more bytes than it declares is refused as
it is parsed, before the servicer copies the payload out of the message.

Reading an entry of a repeated bytes field copies it (upb hands out a new bytes object), and
so does upb's `ByteSize()` (it serialises the message to measure it): a refused 30 MB request
was copied once more, beside gRPC's buffers, the bytes handed to the parser and the parsed
message. The request's wire bytes say each entry's length without a copy: the deserializer
reads it there and hands the servicer a `RefusedPayload` instead of the message, so the parsed
copy is freed at once too.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as kserve
from server.errors import InvalidInput
from server.models.tensors import KSERVE_TO_NUMPY, MAX_RANK

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime class is not generic; the stubs are
    _Handler = grpc.RpcMethodHandler

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# ModelInferRequest.raw_input_contents
_RAW_FIELD = 7
# Top-level fields read before giving up: a request has a few (names, parameters, tensors,
# payloads); thousands of tiny ones are left to the servicer's own checks.
_MAX_FIELDS = 256


class RefusedPayload:
    """What the deserializer hands over instead of a request it refused."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidInput) -> None:
        self.error = error


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise ValueError("truncated varint")


def raw_entry_sizes(data: bytes) -> list[int] | None:
    """The lengths of a serialized ModelInferRequest's raw_input_contents entries, read from
    the wire without copying them; None when it has too many fields to walk cheaply."""
    sizes: list[int] = []
    at = 0
    for _ in range(_MAX_FIELDS):
        if at >= len(data):
            return sizes if at == len(data) else None  # else the last field overran the end
        try:
            tag, at = _varint(data, at)
            wire_type = tag & 7
            if wire_type == 0:
                _, at = _varint(data, at)
            elif wire_type == 1:
                at += 8
            elif wire_type == 5:
                at += 4
            elif wire_type == 2:
                length, at = _varint(data, at)
                if tag >> 3 == _RAW_FIELD:
                    sizes.append(length)
                at += length
            else:
                return None  # groups: not in this message; the parser said what it made of them
        except ValueError:
            return None
    return None if at < len(data) else sizes


def oversized_payload(request: kserve.ModelInferRequest, data: bytes) -> InvalidInput | None:
    """The error `array_from_bytes` would raise, when a request's lone raw input carries more
    bytes than its shape and datatype declare; None otherwise (the servicer checks the rest)."""
    if len(request.raw_input_contents) != 1 or len(request.inputs) != 1:
        return None
    tensor = request.inputs[0]
    dtype = KSERVE_TO_NUMPY.get(tensor.datatype)
    shape = list(tensor.shape)
    if tensor.HasField("contents") or dtype is None or len(shape) > MAX_RANK:
        return None
    if any(dim <= 0 for dim in shape):
        return None  # the usual checks name what is wrong, in their order
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    sizes = raw_entry_sizes(data)
    if sizes is None or len(sizes) != 1 or sizes[0] <= expected:
        return None
    return InvalidInput(
        f"input {tensor.name!r}: {sizes[0]} bytes do not match shape {shape} of "
        f"{tensor.datatype} ({expected} bytes expected)"
    )


class RawPayloadInterceptor(grpc.aio.ServerInterceptor):
    """Gives ModelInfer the deserializer that refuses an oversized lone raw input."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if (
            handler_call_details.method != MODEL_INFER
            or handler is None
            or handler.unary_unary is None
            or handler.request_deserializer is None
        ):
            return handler
        parse = handler.request_deserializer

        def parse_and_measure(data: bytes) -> Any:
            request = parse(data)
            error = oversized_payload(request, data)
            return request if error is None else RefusedPayload(error)

        return grpc.unary_unary_rpc_method_handler(
            handler.unary_unary,
            request_deserializer=parse_and_measure,
            response_serializer=handler.response_serializer,
        )
