"""`inference.GRPCInferenceService` (KServe v2 / Triton) over InferenceCore."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from common.version import EDGEFLEET_VERSION
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.concurrency import bounded_map
from server.core import InferenceCore
from server.errors import EdgeError, Unsupported
from server.grpc_api import convert_kserve
from server.grpc_api.raw_payload import RefusedPayload
from server.grpc_api.status import grpc_errors, status_for
from server.kserve_parameters import refuse_shared_memory, request_options
from server.models.types import InferRequest
from server.observability.failure_log import FailureLog

SERVER_NAME = "edgefleet"
EXTENSIONS = ["classification", "model_repository", "statistics"]
# Requests of one ModelStreamInfer stream processed at once, so they can share batches.
STREAM_WINDOW = 16

# Typed integer or bool values converted on the event loop (numpy walks them one by one, about
# 0.1 us each); larger requests convert in a thread. Float contents are viewed, not walked.
TYPED_VALUES_ON_LOOP = 16_384

Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger(__name__)
_failures = FailureLog(log)  # one line per kind and 10 s; tracebacks at DEBUG


class KServeServicer(kserve_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    @grpc_errors
    async def ServerLive(
        self, request: kserve.ServerLiveRequest, context: Context
    ) -> kserve.ServerLiveResponse:
        return kserve.ServerLiveResponse(live=self._core.live)

    @grpc_errors
    async def ServerReady(
        self, request: kserve.ServerReadyRequest, context: Context
    ) -> kserve.ServerReadyResponse:
        return kserve.ServerReadyResponse(ready=self._core.ready)

    @grpc_errors
    async def ModelReady(
        self, request: kserve.ModelReadyRequest, context: Context
    ) -> kserve.ModelReadyResponse:
        ready = self._core.model_ready(request.name, request.version)
        return kserve.ModelReadyResponse(ready=ready)

    @grpc_errors
    async def ServerMetadata(
        self, request: kserve.ServerMetadataRequest, context: Context
    ) -> kserve.ServerMetadataResponse:
        return kserve.ServerMetadataResponse(
            name=SERVER_NAME, version=EDGEFLEET_VERSION, extensions=EXTENSIONS
        )

    @grpc_errors
    async def ModelMetadata(
        self, request: kserve.ModelMetadataRequest, context: Context
    ) -> kserve.ModelMetadataResponse:
        return convert_kserve.model_metadata_to_pb(
            self._core.model_info(request.name, request.version)
        )

    @grpc_errors
    async def ModelConfig(
        self, request: kserve.ModelConfigRequest, context: Context
    ) -> kserve.ModelConfigResponse:
        info = self._core.model_info(request.name, request.version)
        return kserve.ModelConfigResponse(config=convert_kserve.model_config_to_pb(info))

    @grpc_errors
    async def ModelInfer(
        self, request: kserve.ModelInferRequest | RefusedPayload, context: Context
    ) -> kserve.ModelInferResponse:
        if isinstance(request, RefusedPayload):  # refused as it was parsed (RawPayloadInterceptor)
            raise request.error
        options = request_options(convert_kserve.parameter_values(request.parameters))
        response = await self._core.infer(
            await _request_from_pb(request), timeout_s=options.timeout_s
        )
        return convert_kserve.infer_response_to_pb(response)

    @grpc_errors
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[kserve.ModelInferRequest], context: Context
    ) -> AsyncIterator[kserve.ModelStreamInferResponse]:
        async def answer(request: kserve.ModelInferRequest) -> kserve.ModelStreamInferResponse:
            # Every request gets exactly one answer: a result, or its error in error_message
            # (unexpected errors too, logged here and answered INTERNAL); the stream stays open.
            try:
                options = request_options(convert_kserve.parameter_values(request.parameters))
                response = await self._core.infer(
                    await _request_from_pb(request), timeout_s=options.timeout_s
                )
                message = kserve.ModelStreamInferResponse(
                    infer_response=convert_kserve.infer_response_to_pb(response)
                )
            except Exception as exc:
                if status_for(exc) is grpc.StatusCode.INTERNAL:
                    _failures.failed("unexpected error in ModelStreamInfer", exc)
                message = convert_kserve.stream_error_to_pb(request, exc)
            if convert_kserve.wants_final_flag(request):
                convert_kserve.mark_final(message)
            return message

        responses = bounded_map(answer, request_iterator, STREAM_WINDOW)
        async with contextlib.aclosing(responses):
            async for message in responses:
                yield message

    @grpc_errors
    async def ModelStatistics(
        self, request: kserve.ModelStatisticsRequest, context: Context
    ) -> kserve.ModelStatisticsResponse:
        return convert_kserve.statistics_to_pb(self._core.statistics(request.name, request.version))

    @grpc_errors
    async def RepositoryIndex(
        self, request: kserve.RepositoryIndexRequest, context: Context
    ) -> kserve.RepositoryIndexResponse:
        return convert_kserve.index_to_pb(self._core.repository_index(ready_only=request.ready))

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: kserve.RepositoryModelLoadRequest, context: Context
    ) -> kserve.RepositoryModelLoadResponse:
        version = convert_kserve.load_version_from_pb(request.parameters)
        await self._core.load_model(request.model_name, version)
        return kserve.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: kserve.RepositoryModelUnloadRequest, context: Context
    ) -> kserve.RepositoryModelUnloadResponse:
        await self._core.unload_model(request.model_name)
        return kserve.RepositoryModelUnloadResponse()

    # Shared memory, trace and log settings: wire-compatible names, deliberately not offered.

    @grpc_errors
    async def SystemSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        raise _unsupported("system shared memory")

    @grpc_errors
    async def SystemSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        raise _unsupported("system shared memory")

    @grpc_errors
    async def SystemSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        raise _unsupported("system shared memory")

    @grpc_errors
    async def CudaSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        raise _unsupported("CUDA shared memory")

    @grpc_errors
    async def CudaSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        raise _unsupported("CUDA shared memory")

    @grpc_errors
    async def CudaSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        raise _unsupported("CUDA shared memory")

    @grpc_errors
    async def TraceSetting(self, request: Any, context: Context) -> Any:
        raise _unsupported("trace settings")

    @grpc_errors
    async def LogSettings(self, request: Any, context: Context) -> Any:
        raise _unsupported("log settings")


def _unsupported(feature: str) -> EdgeError:
    return Unsupported(f"{feature} is not supported by edgefleet; send tensors in the request")


async def _request_from_pb(request: kserve.ModelInferRequest) -> InferRequest:
    """Convert on the loop when cheap; a request with many typed values converts in a thread
    (numpy walks them one by one), so other calls keep being answered meanwhile."""
    # Not "0 values in fp32_contents": say what is missing.
    for tensor in request.inputs:
        refuse_shared_memory(tensor.name, tensor.parameters)
    for wanted in request.outputs:
        refuse_shared_memory(wanted.name, wanted.parameters)
    if convert_kserve.typed_element_count(request) <= TYPED_VALUES_ON_LOOP:
        return convert_kserve.infer_request_from_pb(request)
    return await asyncio.to_thread(convert_kserve.infer_request_from_pb, request)
