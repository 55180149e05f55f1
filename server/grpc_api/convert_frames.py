"""FrameStream protobuf <-> domain conversion: the opening options, the camera frames, and the
events a stream yields (results, drops, per-frame errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from server.errors import InvalidInput
from server.frames.types import (
    AnalyticsEventsEvent,
    CreditsEvent,
    DropReason,
    EncodedFrame,
    FrameErrorEvent,
    FrameResultEvent,
    FramesDroppedEvent,
    OverloadPolicy,
    StreamEvent,
    StreamOpenedEvent,
    StreamOptions,
)
from server.grpc_api.analytics_pb import (
    analytics_config_from_pb,
    events_to_pb,
    lines_to_pb,
    zones_to_pb,
)
from server.grpc_api.convert_kserve import output_to_pb
from server.grpc_api.detections_pb import detection_filter_from_pb, detections_to_pb
from server.grpc_api.status import public_message, status_for
from server.models.types import OutputTensor
from server.vision.preprocess import FrameEncoding

_ENCODINGS = {
    fs.FRAME_ENCODING_RAW_RGB: FrameEncoding.RAW_RGB,
    fs.FRAME_ENCODING_RAW_BGR: FrameEncoding.RAW_BGR,
    fs.FRAME_ENCODING_JPEG: FrameEncoding.JPEG,
    fs.FRAME_ENCODING_PNG: FrameEncoding.PNG,
}
_POLICIES = {
    fs.OVERLOAD_POLICY_UNSPECIFIED: OverloadPolicy.DROP_OLDEST,
    fs.OVERLOAD_POLICY_DROP_OLDEST: OverloadPolicy.DROP_OLDEST,
    fs.OVERLOAD_POLICY_BLOCK: OverloadPolicy.BLOCK,
}
_POLICY_TO_PB = {
    OverloadPolicy.DROP_OLDEST: fs.OVERLOAD_POLICY_DROP_OLDEST,
    OverloadPolicy.BLOCK: fs.OVERLOAD_POLICY_BLOCK,
}

_DROP_REASON_TO_PB = {
    DropReason.REPLACED: fs.DROP_REASON_REPLACED,
    DropReason.STALE: fs.DROP_REASON_STALE,
    DropReason.OVERLOADED: fs.DROP_REASON_OVERLOADED,
}


def stream_options_from_pb(message: fs.StreamRequest) -> StreamOptions:
    if message.WhichOneof("kind") != "open":
        raise InvalidInput("the first message of a FrameStream must be `open`")
    opening = message.open
    if not opening.model_name:
        raise InvalidInput("open.model_name is required")
    if opening.encoding == fs.FRAME_ENCODING_UNSPECIFIED:
        raise InvalidInput("open.encoding is required (RAW_RGB, RAW_BGR, JPEG or PNG)")
    if opening.encoding not in _ENCODINGS:
        raise InvalidInput(f"open.encoding {opening.encoding} is not a known frame encoding")
    if opening.overload_policy not in _POLICIES:
        raise InvalidInput(f"open.overload_policy {opening.overload_policy} is not known")
    return StreamOptions(
        model_name=opening.model_name,
        model_version=opening.model_version,
        encoding=_ENCODINGS[opening.encoding],
        source_fps=opening.source_fps,
        policy=_POLICIES[opening.overload_policy],
        max_in_flight=opening.max_in_flight,
        top_k=opening.results.top_k,
        raw_tensors=opening.results.raw_tensors,
        stream_id=opening.stream_id,
        max_age_ms=opening.max_age_ms,
        detection=detection_filter_from_pb(opening.results),
        analytics=(
            analytics_config_from_pb(opening.analytics) if opening.HasField("analytics") else None
        ),
        flow_credits=opening.flow_credits,
    )


class HeldRequest:
    """A parsed StreamRequest, handed over once (`take`). gRPC's request iterator keeps the last
    message it yielded until the next one arrives, so a BLOCK stream waiting for the frame
    memory budget kept its last raw 4K frame there: a second 24 MB copy per stream, outside
    the budget. It keeps this empty envelope instead."""

    __slots__ = ("_message",)

    def __init__(self, message: fs.StreamRequest) -> None:
        self._message: fs.StreamRequest | None = message

    @classmethod
    def parse(cls, data: bytes) -> HeldRequest:
        """The request deserializer (raises DecodeError as `FromString` does)."""
        return cls(fs.StreamRequest.FromString(data))

    def take(self) -> fs.StreamRequest:
        message, self._message = self._message, None
        if message is None:
            raise RuntimeError("a FrameStream request was taken twice")
        return message


async def frames_from_pb(requests: AsyncIterator[HeldRequest]) -> AsyncIterator[EncodedFrame]:
    async for request in requests:
        frame = _frame_from_pb(request.take())  # the message is gone once this returns
        yield frame


def _frame_from_pb(message: fs.StreamRequest) -> EncodedFrame:
    if message.WhichOneof("kind") != "frame":
        raise InvalidInput("after `open`, every FrameStream message must be a `frame`")
    frame = message.frame
    return EncodedFrame(
        sequence=frame.sequence,
        capture_time_ns=frame.capture_time_unix_ns,
        data=frame.data,
        width=frame.width,
        height=frame.height,
    )


def _tensor_to_pb(output: OutputTensor) -> fs.Tensor:
    """A raw output tensor, in the same datatype and byte layout as a KServe response's."""
    tensor, raw = output_to_pb(output)
    return fs.Tensor(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape, data=raw)


def stream_event_to_pb(event: StreamEvent) -> fs.StreamResponse:
    if isinstance(event, FrameResultEvent):
        return fs.StreamResponse(
            result=fs.FrameResult(
                sequence=event.sequence,
                capture_time_unix_ns=event.capture_time_ns,
                model_name=event.model_name,
                model_version=event.model_version,
                labels=[
                    fs.Label(class_id=item.class_id, label=item.label, score=item.score)
                    for item in event.labels
                ],
                tensors=[_tensor_to_pb(tensor) for tensor in event.tensors],
                detections=detections_to_pb(event.detections),
                timings=fs.Timings(
                    queue_us=event.timings.queue_us,
                    preprocess_us=event.timings.preprocess_us,
                    inference_us=event.timings.inference_us,
                    postprocess_us=event.timings.postprocess_us,
                    total_us=event.timings.total_us,
                    batch_size=event.timings.batch_size,
                ),
                age_us=event.age_us,
                zones=zones_to_pb(event.zones),
                lines=lines_to_pb(event.lines),
                truncated=event.truncated,
            )
        )
    if isinstance(event, CreditsEvent):
        return fs.StreamResponse(credits=fs.Credits(frames=event.frames))
    if isinstance(event, AnalyticsEventsEvent):
        return fs.StreamResponse(events=events_to_pb(event.events))
    if isinstance(event, FramesDroppedEvent):
        return fs.StreamResponse(
            dropped=fs.FramesDropped(
                sequences=list(event.sequences),
                reason=event.reason,
                total_dropped=event.total_dropped,
                reason_code=_DROP_REASON_TO_PB[event.reason_code],
            )
        )
    if isinstance(event, FrameErrorEvent):
        return fs.StreamResponse(
            error=fs.FrameError(
                sequence=event.sequence,
                code=status_for(event.error).value[0],
                message=public_message(event.error),
            )
        )
    if isinstance(event, StreamOpenedEvent):
        return fs.StreamResponse(
            opened=fs.StreamOpened(
                stream_id=event.stream_id,
                model_name=event.model_name,
                model_version=event.model_version,
                max_in_flight=event.max_in_flight,
                overload_policy=_POLICY_TO_PB[event.policy],
                flow_credits=event.flow_credits,
            )
        )
    raise TypeError(f"unknown stream event {type(event).__name__}")
