"""`edgefleet.v1.ServerInfoService`: a model's manifest and runtime plan, the device's facts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import grpc

from protos.edgefleet.v1 import server_info_pb2 as info_pb
from protos.edgefleet.v1 import server_info_pb2_grpc as info_grpc
from server.core import InferenceCore
from server.errors import Unsupported
from server.grpc_api import convert_info
from server.grpc_api.status import grpc_errors

Context = grpc.aio.ServicerContext[Any, Any]
DeviceFacts = Callable[[], dict[str, Any]]


class ServerInfoServicer(info_grpc.ServerInfoServiceServicer):
    def __init__(self, core: InferenceCore, device_facts: DeviceFacts | None = None) -> None:
        self._core = core
        self._device_facts = device_facts

    @grpc_errors
    async def GetModelInfo(
        self, request: info_pb.GetModelInfoRequest, context: Context
    ) -> info_pb.GetModelInfoResponse:
        info = self._core.model_info(request.name, request.version)
        manifest_json, plan_json = convert_info.model_info_to_json(info)
        return info_pb.GetModelInfoResponse(
            name=info.name,
            version=info.version,
            active_version=info.active_version,
            loaded_versions=info.loaded_versions,
            manifest_json=manifest_json,
            plan_json=plan_json,
        )

    @grpc_errors
    async def GetDeviceFacts(
        self, request: info_pb.GetDeviceFactsRequest, context: Context
    ) -> info_pb.GetDeviceFactsResponse:
        if self._device_facts is None:
            raise Unsupported("this server was started without a hardware probe")
        # A probe reads /proc, /sys and NVML: blocking work, kept off the event loop.
        facts = await asyncio.to_thread(self._device_facts)
        return info_pb.GetDeviceFactsResponse(facts_json=json.dumps(facts))
