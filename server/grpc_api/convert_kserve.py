"""KServe v2 (Triton's GRPCInferenceService) protobuf <-> domain conversion, both directions:
inference requests and responses, model metadata and config, statistics, the repository index.
The HTTP transport (server/http_api/) builds the same messages for its JSON."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any, cast

import numpy as np

from protos.inference import grpc_service_pb2 as kserve
from server.core import ModelInfo
from server.errors import InvalidInput
from server.grpc_api.status import public_message
from server.kserve_parameters import load_version
from server.manifest import ModelManifest, TensorSpec
from server.models.registry import ModelIndexEntry
from server.models.stats import Duration, ModelStats
from server.models.tensors import array_from_bytes, element_count, kserve_datatype, numpy_dtype
from server.models.types import InferRequest, InferResponse, OutputTensor, RequestedOutput

# ---------------------------------------------------------------- KServe inference

# Typed contents field per KServe datatype, for requests that do not use raw bytes.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


# More inputs or outputs than any model has; bounds the per-request work done on the loop.
MAX_TENSORS_PER_REQUEST = 64
# Typed integer contents travel as int32/uint32/int64/uint64; narrower dtypes are range-checked.
_INTEGER_KINDS = frozenset("iu")


def infer_request_from_pb(request: kserve.ModelInferRequest) -> InferRequest:
    if not request.model_name:
        raise InvalidInput("model_name is required")
    if not request.inputs:
        raise InvalidInput(f"request for model {request.model_name!r} has no inputs")
    if len(request.inputs) > MAX_TENSORS_PER_REQUEST:
        raise InvalidInput(
            f"request for model {request.model_name!r} has {len(request.inputs)} inputs "
            f"(at most {MAX_TENSORS_PER_REQUEST})"
        )
    if len(request.outputs) > MAX_TENSORS_PER_REQUEST:
        raise InvalidInput(
            f"request for model {request.model_name!r} asks for {len(request.outputs)} outputs "
            f"(at most {MAX_TENSORS_PER_REQUEST})"
        )
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
            "send one entry per input, in input order"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InvalidInput(f"input {tensor.name!r} appears twice")
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input {tensor.name!r}: typed contents must not be sent together with "
                    "raw_input_contents; use one or the other"
                )
            arrays[tensor.name] = array_from_bytes(
                raw[index], tensor.datatype, shape, tensor=tensor.name
            )
        else:
            arrays[tensor.name] = _array_from_contents(tensor, shape)
    outputs = tuple(
        RequestedOutput(name=output.name, classification=_classification_count(output))
        for output in request.outputs
    )
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=arrays,
        outputs=outputs,
    )


def _classification_count(output: kserve.ModelInferRequest.InferRequestedOutputTensor) -> int:
    if "classification" not in output.parameters:
        return 0
    value = output.parameters["classification"]
    choice = value.WhichOneof("parameter_choice")
    if choice == "int64_param":
        return int(value.int64_param)
    if choice == "uint64_param":
        return int(value.uint64_param)
    raise InvalidInput(f"output {output.name!r}: parameter 'classification' must be an integer")


def typed_element_count(request: kserve.ModelInferRequest) -> int:
    """Values sent in typed contents: what converting them to arrays will cost."""
    total = 0
    for tensor in request.inputs:
        field = _CONTENTS_FIELD.get(tensor.datatype)
        if field is not None and field not in _FIXED_WIDTH_FIELDS:
            total += len(getattr(tensor.contents, field))
    return total


def _array_from_contents(
    tensor: kserve.ModelInferRequest.InferInputTensor, shape: list[int]
) -> np.ndarray:
    field = _CONTENTS_FIELD.get(tensor.datatype)
    dtype = numpy_dtype(tensor.datatype, tensor=tensor.name)
    if field is None:
        raise InvalidInput(
            f"input {tensor.name!r}: {tensor.datatype} must be sent in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    expected = element_count(shape, tensor=tensor.name)
    if len(values) != expected:
        raise InvalidInput(
            f"input {tensor.name!r}: {len(values)} values in {field} do not match shape {shape}"
        )
    if field in _FIXED_WIDTH_FIELDS:
        # Packed float fields are little-endian IEEE values on the wire: re-serialise (in C)
        # and view the bytes, instead of walking 150k Python floats (~100x faster).
        data = _packed_field(tensor.contents, field)
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    if dtype.kind not in _INTEGER_KINDS:
        return np.asarray(values, dtype=dtype).reshape(shape)
    wide = np.asarray(values, dtype=np.uint64 if dtype.kind == "u" else np.int64)
    limits = np.iinfo(dtype.type)  # type: ignore[type-var]  # an integer dtype, checked above
    if wide.min() < limits.min or wide.max() > limits.max:
        raise InvalidInput(
            f"input {tensor.name!r}: values in {field} outside the {tensor.datatype} range "
            f"[{limits.min}, {limits.max}]"
        )
    return wide.astype(dtype).reshape(shape)


_FIXED_WIDTH_FIELDS = frozenset({"fp32_contents", "fp64_contents"})


def _varint(data: bytes, index: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[index]
        index += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index
        shift += 7


def _packed_field(contents: kserve.InferTensorContents, field: str) -> bytes:
    """The packed payload of one repeated fixed-width field, from the canonical serialisation
    (protobuf writes proto3 repeated scalars packed: tag, length, values)."""
    number = contents.DESCRIPTOR.fields_by_name[field].number
    data = contents.SerializeToString()
    parts: list[bytes] = []
    index = 0
    while index < len(data):
        tag, index = _varint(data, index)
        wire_type = tag & 7
        if wire_type == 2:
            length, index = _varint(data, index)
            if tag >> 3 == number:
                parts.append(data[index : index + length])
            index += length
        elif wire_type == 0:
            _, index = _varint(data, index)
        else:  # fixed32/fixed64 unpacked values never come from a canonical serialisation
            index += 4 if wire_type == 5 else 8
    return b"".join(parts)


def _serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """KServe BYTES raw layout: each element as a 4-byte little-endian length, then the bytes."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def output_to_pb(
    output: OutputTensor,
) -> tuple[kserve.ModelInferResponse.InferOutputTensor, bytes]:
    array = output.array
    if output.is_bytes:
        datatype, raw = "BYTES", _serialize_bytes_tensor(array)
    else:
        datatype = kserve_datatype(str(array.dtype))
        raw = (
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        )
    tensor = kserve.ModelInferResponse.InferOutputTensor(
        name=output.name, datatype=datatype, shape=list(array.shape)
    )
    return tensor, raw


def infer_response_to_pb(response: InferResponse) -> kserve.ModelInferResponse:
    message = kserve.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for output in response.outputs:
        tensor, raw = output_to_pb(output)
        message.outputs.append(tensor)
        message.raw_output_contents.append(raw)
    return message


def stream_error_to_pb(
    request: kserve.ModelInferRequest, error: Exception
) -> kserve.ModelStreamInferResponse:
    return kserve.ModelStreamInferResponse(
        error_message=public_message(error),
        infer_response=kserve.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


# Triton's decoupled-final protocol: a request carrying this flag gets `triton_final_response`
# on its last response. Models here answer once, so that one response is also the final one.
ENABLE_FINAL_FLAG = "triton_enable_empty_final_response"
FINAL_FLAG = "triton_final_response"


def wants_final_flag(request: kserve.ModelInferRequest) -> bool:
    return ENABLE_FINAL_FLAG in request.parameters and bool(
        request.parameters[ENABLE_FINAL_FLAG].bool_param
    )


def mark_final(message: kserve.ModelStreamInferResponse) -> None:
    message.infer_response.parameters[FINAL_FLAG].bool_param = True


# ---------------------------------------------------------------- KServe metadata

_PLATFORM = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch", "pipeline": "ensemble"}
_BACKEND = {"onnx": "onnxruntime", "torchscript": "pytorch", "pipeline": ""}


def _metadata_shape(spec: TensorSpec) -> list[int]:
    return spec.fixed_dims()


def model_metadata_to_pb(info: ModelInfo) -> kserve.ModelMetadataResponse:
    manifest = info.manifest
    return kserve.ModelMetadataResponse(
        name=info.name,
        versions=info.versions_on_disk,
        platform=_PLATFORM[manifest.format],
        inputs=[
            kserve.ModelMetadataResponse.TensorMetadata(
                name=spec.name, datatype=kserve_datatype(spec.dtype), shape=_metadata_shape(spec)
            )
            for spec in manifest.inputs
        ],
        outputs=[
            kserve.ModelMetadataResponse.TensorMetadata(
                name=spec.name, datatype=kserve_datatype(spec.dtype), shape=_metadata_shape(spec)
            )
            for spec in manifest.outputs
        ],
    )


def _config_dims(spec: TensorSpec, batching: bool) -> list[int]:
    dims = spec.fixed_dims()
    return dims[1:] if batching else dims


def model_config_to_pb(info: ModelInfo) -> kserve.ModelConfig:
    manifest: ModelManifest = info.manifest
    plan = info.plan
    batching = info.max_batch_size > 0
    layout = manifest.preprocess.layout if manifest.preprocess else ""
    input_format = {
        "nchw": kserve.ModelInput.FORMAT_NCHW,
        "nhwc": kserve.ModelInput.FORMAT_NHWC,
    }.get(layout, kserve.ModelInput.FORMAT_NONE)
    on_gpu = any(
        name in plan.providers for name in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    )
    config = kserve.ModelConfig(
        name=info.name,
        platform=_PLATFORM[manifest.format],
        backend=_BACKEND[manifest.format],
        max_batch_size=info.max_batch_size,
        default_model_filename=plan.shown_model_file,
        input=[
            kserve.ModelInput(
                name=spec.name,
                data_type=_config_datatype(spec.dtype),
                format=input_format
                if manifest.preprocess and spec.name == manifest.preprocess.input
                else kserve.ModelInput.FORMAT_NONE,
                dims=_config_dims(spec, batching),
            )
            for spec in manifest.inputs
        ],
        output=[
            kserve.ModelOutput(
                name=spec.name,
                data_type=_config_datatype(spec.dtype),
                dims=_config_dims(spec, batching),
                label_filename=(
                    manifest.postprocess.labels_file or ""
                    if spec.name == manifest.postprocess.output
                    else ""
                ),
            )
            for spec in manifest.outputs
        ],
        instance_group=[
            kserve.ModelInstanceGroup(
                name=f"{info.name}_0",
                kind=kserve.ModelInstanceGroup.KIND_GPU
                if on_gpu
                else kserve.ModelInstanceGroup.KIND_CPU,
                count=plan.instance_count,
            )
        ],
        version_policy=kserve.ModelVersionPolicy(
            latest=kserve.ModelVersionPolicy.Latest(num_versions=1)
        ),
    )
    if batching:
        config.dynamic_batching.CopyFrom(
            kserve.ModelDynamicBatching(
                preferred_batch_size=[plan.max_batch_size],
                max_queue_delay_microseconds=plan.max_queue_delay_us,
                default_queue_policy=kserve.ModelQueuePolicy(max_queue_size=plan.max_queue_size),
            )
        )
    accelerators = config.optimization.execution_accelerators
    for provider in plan.providers:
        target = (
            accelerators.gpu_execution_accelerator
            if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
            else accelerators.cpu_execution_accelerator
        )
        target.append(
            kserve.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator(name=provider)
        )
    config.parameters["edgefleet.plan"].string_value = json.dumps(plan.to_dict(), sort_keys=True)
    config.parameters["edgefleet.runtime"].string_value = info.backend
    config.parameters["edgefleet.precision"].string_value = plan.precision
    if manifest.pipeline is not None:
        config.parameters["edgefleet.pipeline"].string_value = manifest.pipeline.model_dump_json()
    return config


def _config_datatype(dtype: str) -> kserve.DataType:
    return cast(kserve.DataType, kserve.DataType.Value(f"TYPE_{kserve_datatype(dtype)}"))


def _duration(duration: Duration) -> kserve.StatisticDuration:
    return kserve.StatisticDuration(count=duration.count, ns=duration.ns)


def statistics_to_pb(stats: Iterable[ModelStats]) -> kserve.ModelStatisticsResponse:
    response = kserve.ModelStatisticsResponse()
    for item in stats:
        response.model_stats.append(
            kserve.ModelStatistics(
                name=item.name,
                version=item.version,
                last_inference=item.last_inference_ms,
                inference_count=item.inference_count,
                execution_count=item.execution_count,
                inference_stats=kserve.InferStatistics(
                    success=_duration(item.success),
                    fail=_duration(item.fail),
                    queue=_duration(item.queue),
                    compute_input=_duration(item.compute_input),
                    compute_infer=_duration(item.compute_infer),
                    compute_output=_duration(item.compute_output),
                ),
                batch_stats=[
                    kserve.InferBatchStatistics(
                        batch_size=size,
                        compute_input=_duration(batch.compute_input),
                        compute_infer=_duration(batch.compute_infer),
                        compute_output=_duration(batch.compute_output),
                    )
                    for size, batch in sorted(item.batches.items())
                ],
            )
        )
    return response


def index_to_pb(entries: Iterable[ModelIndexEntry]) -> kserve.RepositoryIndexResponse:
    return kserve.RepositoryIndexResponse(
        models=[
            kserve.RepositoryIndexResponse.ModelIndex(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
            for entry in entries
        ]
    )


def parameter_values(parameters: Any) -> dict[str, Any]:
    """A protobuf parameter map (InferParameter or ModelRepositoryParameter oneofs) as plain
    values, for the rules both transports share (`server.kserve_parameters`)."""
    values = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        values[key] = getattr(value, choice) if choice is not None else None
    return values


def load_version_from_pb(
    parameters: Any,
) -> str | None:
    """RepositoryModelLoad's optional "version" parameter, by the HTTP port's rule too."""
    return load_version(parameter_values(parameters))
