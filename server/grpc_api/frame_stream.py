"""`edgefleet.v1.FrameStreamService`: camera streams over InferenceCore."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.core import InferenceCore
from server.grpc_api import convert_frames
from server.grpc_api.status import grpc_errors

SERVICE_NAME = fs.DESCRIPTOR.services_by_name["FrameStreamService"].full_name


def add_frame_stream_service(servicer: FrameStreamServicer, server: grpc.aio.Server) -> None:
    """As the generated `add_FrameStreamServiceServicer_to_server`, with requests parsed into
    envelopes the servicer empties (`convert_frames.HeldRequest`)."""
    handlers = {
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=convert_frames.HeldRequest.parse,
            response_serializer=fs.StreamResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class FrameStreamServicer(fs_grpc.FrameStreamServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    @grpc_errors
    async def Stream(
        self,
        request_iterator: AsyncIterator[convert_frames.HeldRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[fs.StreamResponse]:
        requests = aiter(request_iterator)
        try:
            first = (await anext(requests)).take()
        except StopAsyncIteration:
            return
        options = convert_frames.stream_options_from_pb(first)
        del first
        events = self._core.stream(options, convert_frames.frames_from_pb(requests))
        async with contextlib.aclosing(events):
            async for event in events:
                yield convert_frames.stream_event_to_pb(event)
