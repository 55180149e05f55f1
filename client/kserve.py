"""KServe v2 (Triton) gRPC helper: numpy tensors in, numpy tensors out, unary or streaming."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc

_DATATYPE_BY_DTYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
_DTYPE_BY_DATATYPE = {name: dtype for dtype, name in _DATATYPE_BY_DTYPE.items()}


class TensorConversionError(ValueError):
    """An array or a response tensor that has no KServe v2 raw encoding here."""


@dataclass(frozen=True)
class StreamInferResult:
    """One answer on a ModelStreamInfer stream: outputs, or the error for that one request."""

    request_id: str
    outputs: Mapping[str, np.ndarray]
    error: str | None


def build_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    outputs: Sequence[str] = (),
    request_id: str = "",
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        datatype = _DATATYPE_BY_DTYPE.get(array.dtype)
        if datatype is None:
            raise TensorConversionError(f"input {name!r}: dtype {array.dtype} has no KServe type")
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        # The wire is little-endian, row-major.
        request.raw_input_contents.append(
            np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        )
    for name in outputs:
        request.outputs.add(name=name)
    return request


def parse_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    if len(response.raw_output_contents) != len(response.outputs):
        raise TensorConversionError("response has no raw_output_contents for every output")
    arrays: dict[str, np.ndarray] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        dtype = _DTYPE_BY_DATATYPE.get(tensor.datatype)
        if dtype is None:
            raise TensorConversionError(f"output {tensor.name!r}: datatype {tensor.datatype}")
        array = np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype, copy=False)
        arrays[tensor.name] = array.reshape(tuple(tensor.shape))
    return arrays


class KServeClient:
    """Calls on `channel` (owned by the caller); `metadata` goes with every call."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()):
        self._stub = pb_grpc.GRPCInferenceServiceStub(channel)
        self._metadata = metadata

    async def server_ready(self) -> bool:
        response = await self._stub.ServerReady(pb.ServerReadyRequest(), metadata=self._metadata)
        return bool(response.ready)

    async def model_ready(self, model: str, version: str = "") -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        response = await self._stub.ModelReady(request, metadata=self._metadata)
        return bool(response.ready)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One ModelInfer call; a refusal raises grpc.aio.AioRpcError with the server's status."""
        request = build_request(model, inputs, version=version, outputs=outputs)
        response = await self._stub.ModelInfer(request, metadata=self._metadata, timeout=timeout_s)
        return parse_response(response)

    async def stream_infer(
        self,
        model: str,
        batches: AsyncIterable[Mapping[str, np.ndarray]],
        *,
        version: str = "",
        outputs: Sequence[str] = (),
    ) -> AsyncIterator[StreamInferResult]:
        """ModelStreamInfer: one result per batch, ids "0", "1", ... in sending order."""

        async def requests() -> AsyncIterator[pb.ModelInferRequest]:
            index = 0
            async for batch in batches:
                yield build_request(
                    model, batch, version=version, outputs=outputs, request_id=str(index)
                )
                index += 1

        call = self._stub.ModelStreamInfer(requests(), metadata=self._metadata)
        async for response in call:
            if response.error_message:
                request_id = response.infer_response.id
                yield StreamInferResult(request_id, {}, response.error_message)
            else:
                parsed = parse_response(response.infer_response)
                yield StreamInferResult(response.infer_response.id, parsed, None)
