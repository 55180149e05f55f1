"""One camera's FrameStream: send frames from any async iterator, receive results as they come.

The connection can break (server restart, network): the client reconnects with exponential
backoff and jitter, opens the stream again and resumes. Frames the broken connection had not
answered are re-sent under the BLOCK policy (recorded video: nothing may be lost) and counted as
lost under DROP_OLDEST (a live camera wants the freshest frame, not a stale one).

With `keep_frames`, each frame's pixels travel with it until it is settled and come back on its
FrameResult (for `--save-video`): only frames in flight are held, and a frame the server dropped
or the client replaced is released at once.

With flow credits (a live stream, and a server that grants them: StreamOpened.flow_credits > 0),
the client keeps reading its source but encodes and sends a frame only when it holds a credit:
the newest frame read, at that moment. Frames read meanwhile are discarded before encoding
(`frames_skipped_source`), so no frame is encoded or sent only for the server to replace it.
A server that grants no credits gets frames as before.

Memory stays bounded whatever the consumer does: the send queue holds `send_queue_frames`, at
most `client_window` frames are unsettled, and results are read only as fast as the caller takes
them; a live source then drops its oldest frames on the client, before they cost bandwidth.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum

import grpc

# Re-exported: callers configure a stream's backoff from here.
from client.backoff import BackoffPolicy as BackoffPolicy
from client.events import AnalyticsEvent, AnalyticsSettings, Anchor, EventKind
from client.frames import CapturedFrame, Encoding, encode_frame
from client.stats import StreamState, StreamStats
from protos.edgefleet.v1 import frame_stream_pb2 as pb
from protos.edgefleet.v1 import frame_stream_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Codes a restart or a network blip produces; anything else (bad model, bad token) is final.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
# Frames remembered for latency and resend; past this the oldest is written off as lost.
MAX_TRACKED_IN_FLIGHT = 4096

_WIRE_ENCODING = {Encoding.JPEG: pb.FRAME_ENCODING_JPEG, Encoding.RAW: pb.FRAME_ENCODING_RAW_BGR}


class OverloadPolicy(StrEnum):
    DROP_OLDEST = "drop-oldest"
    BLOCK = "block"


_WIRE_POLICY = {
    OverloadPolicy.DROP_OLDEST: pb.OVERLOAD_POLICY_DROP_OLDEST,
    OverloadPolicy.BLOCK: pb.OVERLOAD_POLICY_BLOCK,
}


@dataclass(frozen=True)
class StreamConfig:
    model_name: str
    # Empty: the server's active version, following hot swaps.
    model_version: str = ""
    encoding: Encoding = Encoding.JPEG
    jpeg_quality: int = 85
    overload_policy: OverloadPolicy = OverloadPolicy.DROP_OLDEST
    # 0: the server's default window.
    max_in_flight: int = 0
    # The server drops frames that waited longer than this as stale; 0: no limit.
    max_age_ms: int = 0
    # 0: the model's default number of labels.
    top_k: int = 0
    stream_id: str = ""
    source_fps: float = 0.0
    # Encoded frames waiting for the wire; a live source drops the oldest when it is full.
    send_queue_frames: int = 8
    # Frames sent but not yet settled (answered, dropped, rejected); 0: twice the server's
    # window. Past it the sender waits, so a slow reader or server backs up into the bounded
    # send queue (where a live source drops its oldest frames) instead of into memory.
    client_window: int = 0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    # A server that accepts the call but sends no `opened` within this is treated as down.
    open_timeout_s: float = 10.0
    # Hand each answered frame's pixels back on its FrameResult (annotated video).
    keep_frames: bool = False
    # Result options (protos ResultOptions); 0 or empty: the model's own.
    score_threshold: float = 0.0
    max_detections: int = 0
    class_ids: tuple[int, ...] = ()
    # x_min, y_min, x_max, y_max in source-frame pixels; None: the whole frame.
    region_of_interest: tuple[float, float, float, float] | None = None
    # Tracking, zones, lines and events on the server (AnalyticsOptions); None: off.
    analytics: AnalyticsSettings | None = None
    # Live (DROP_OLDEST) streams ask the server for flow credits and send only when granted.
    flow_credits: bool = False


_DROP_KINDS = {
    pb.DROP_REASON_REPLACED: "replaced",
    pb.DROP_REASON_STALE: "stale",
    pb.DROP_REASON_OVERLOADED: "overloaded",
}


@dataclass(frozen=True)
class Label:
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class Connected:
    stream_id: str
    model_name: str
    model_version: str
    max_in_flight: int
    resent: int


@dataclass(frozen=True)
class Detected:
    """A box the server found, in the pixels of the frame as sent."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    score: float
    class_id: int
    label: str
    text: str
    polygon: tuple[tuple[float, float], ...] = ()
    keypoints: tuple[tuple[float, float], ...] = ()

    @property
    def caption(self) -> str:
        """What a person wants to read about it: the text read, else the label."""
        return self.text or self.label or str(self.class_id)


@dataclass(frozen=True)
class FrameResult:
    sequence: int
    capture_time_unix_ns: int
    model_name: str
    model_version: str
    labels: tuple[Label, ...]
    # From sending the frame to receiving its result, on this host's monotonic clock.
    latency_s: float | None
    server_total_us: int
    batch_size: int
    detections: tuple[Detected, ...] = ()
    # The frame as captured, when the stream keeps frames (StreamConfig.keep_frames).
    frame: CapturedFrame | None = None


@dataclass(frozen=True)
class FramesDropped:
    sequences: tuple[int, ...]
    reason: str
    # replaced (a newer frame won), stale (over max_age_ms), overloaded, or unspecified.
    kind: str = "unspecified"


@dataclass(frozen=True)
class FrameRejected:
    sequence: int
    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class Reconnecting:
    attempt: int
    delay_s: float
    reason: str
    frames_lost: int


@dataclass(frozen=True)
class AnalyticsEvents:
    """The analytics events of one frame, right after its FrameResult."""

    events: tuple[AnalyticsEvent, ...]


StreamEvent = (
    Connected | FrameResult | FramesDropped | FrameRejected | Reconnecting | AnalyticsEvents
)

_WIRE_ANCHOR = {
    Anchor.BOTTOM_CENTER: pb.ANCHOR_POINT_BOTTOM_CENTER,
    Anchor.CENTER: pb.ANCHOR_POINT_CENTER,
}
_EVENT_KINDS = {
    pb.ANALYTICS_EVENT_KIND_APPEAR: EventKind.APPEAR,
    pb.ANALYTICS_EVENT_KIND_DISAPPEAR: EventKind.DISAPPEAR,
    pb.ANALYTICS_EVENT_KIND_ZONE_ENTER: EventKind.ZONE_ENTER,
    pb.ANALYTICS_EVENT_KIND_ZONE_LEAVE: EventKind.ZONE_LEAVE,
    pb.ANALYTICS_EVENT_KIND_LINE_CROSS: EventKind.LINE_CROSS,
}
_DIRECTIONS = {pb.CROSSING_DIRECTION_IN: "in", pb.CROSSING_DIRECTION_OUT: "out"}


def analytics_to_pb(settings: AnalyticsSettings) -> pb.AnalyticsOptions:
    def points(xy: tuple[tuple[float, float], ...]) -> list[pb.Point]:
        return [pb.Point(x=x, y=y) for x, y in xy]

    return pb.AnalyticsOptions(
        high_score=settings.high_score,
        low_score=settings.low_score,
        match_iou=settings.match_iou,
        min_hits=settings.min_hits,
        lost_seconds=settings.lost_seconds,
        zones=[pb.Polygon(name=name, points=points(xy)) for name, xy in settings.zones],
        lines=[pb.Line(name=name, points=points(xy)) for name, xy in settings.lines],
        masks=[pb.Polygon(points=points(xy)) for xy in settings.masks],
        class_score_thresholds=dict(settings.class_thresholds),
        anchor=_WIRE_ANCHOR[settings.anchor],
        normalized=settings.normalized,
    )


def analytics_event_from_pb(event: pb.AnalyticsEvent) -> AnalyticsEvent | None:
    """The event as a value; None for a kind this client does not know (a newer server)."""
    kind = _EVENT_KINDS.get(event.kind)
    if kind is None:
        return None
    box = event.box
    return AnalyticsEvent(
        kind=kind,
        stream_id=event.stream_id,
        model_name=event.model_name,
        model_version=event.model_version,
        track_id=event.track_id,
        class_id=event.class_id,
        label=event.label,
        sequence=event.sequence,
        capture_time_unix_ns=event.capture_time_unix_ns,
        box=(box.x_min, box.y_min, box.x_max, box.y_max),
        score=event.score,
        name=event.name,
        direction=_DIRECTIONS.get(event.direction, ""),
    )


class StreamFailed(Exception):
    """The stream cannot go on: a final status, or reconnect attempts ran out."""

    def __init__(self, code: grpc.StatusCode | None, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Outgoing:
    sequence: int
    request: pb.StreamRequest
    sent_at: float = 0.0
    # Kept only with StreamConfig.keep_frames, and only while the frame is unsettled.
    frame: CapturedFrame | None = None


_END = None
_Call = grpc.aio.StreamStreamCall[pb.StreamRequest, pb.StreamResponse]
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class FrameStreamClient:
    """Streams one source's frames over `channel` (owned by the caller) and yields events.

    `metadata` is sent with every call (the auth token, see `client.security`).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        config: StreamConfig,
        metadata: tuple[tuple[str, str], ...] = (),
        *,
        stats: StreamStats | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._stub = pb_grpc.FrameStreamServiceStub(channel)
        self._config = config
        self._metadata = metadata
        self.stats = stats if stats is not None else StreamStats()
        self._rng = rng if rng is not None else random.Random()
        self._outbox: asyncio.Queue[_Outgoing | None] = asyncio.Queue(config.send_queue_frames)
        self._in_flight: OrderedDict[int, _Outgoing] = OrderedDict()
        self._room = asyncio.Event()
        self._window = 0
        self._resending = 0
        self._opened = asyncio.Event()
        self._source_done = False
        self._source_error: BaseException | None = None
        self._streamed = False
        self._sequence = 0
        # Flow credits: asked for (live streams), granted by this connection's server (None
        # until its `opened`), held now, and the most ever held (the server's window).
        self._credits_asked = config.flow_credits and config.overload_policy is (
            OverloadPolicy.DROP_OLDEST
        )
        self._credits_on: bool | None = None if self._credits_asked else False
        self._credits = 0
        self._credit_limit = 1
        self._credit_granted = asyncio.Event()
        # The newest frame read and not sent (credits on, or not known yet), and the source's end.
        self._newest: CapturedFrame | None = None
        self._newest_ready = asyncio.Event()
        self._source_ended = False

    async def stream(self, frames: AsyncIterable[CapturedFrame]) -> AsyncIterator[StreamEvent]:
        """Send every frame of `frames`; yield events until all are answered, dropped or lost.

        Raises StreamFailed when the server refuses the stream or cannot be reached in
        `backoff.max_attempts` consecutive tries, and re-raises a source's own error at the end.
        """
        if self._streamed:
            raise RuntimeError("a FrameStreamClient streams once; make another for a new stream")
        self._streamed = True
        pump = asyncio.create_task(self._pump(frames), name="frame-pump")
        resend: list[_Outgoing] = []
        failures = 0
        try:
            while True:
                outcome: str | grpc.aio.AioRpcError
                call = self._stub.Stream(metadata=self._metadata)
                # Tracked before the sender runs: if this attempt fails too, they are still owed.
                now = asyncio.get_running_loop().time()
                for outgoing in resend:
                    self._track(outgoing, now)
                self._resending = len(resend)
                self._opened = asyncio.Event()
                sender = asyncio.create_task(self._send(call, resend), name="frame-sender")
                resend = []
                try:
                    async for event in self._read(call):
                        if isinstance(event, Connected):
                            failures = 0
                        yield event
                    outcome = "done" if self._source_done else "server ended the stream early"
                except grpc.aio.AioRpcError as error:
                    outcome = error
                except TimeoutError:
                    outcome = (
                        f"no 'opened' from the server within {self._config.open_timeout_s:g} s"
                    )
                finally:
                    sender.cancel()
                    # gather: the sender's cancellation is taken, this task's own is not.
                    await asyncio.gather(sender, return_exceptions=True)
                    call.cancel()
                if outcome == "done":
                    # The server closed after our last frame; anything it left unanswered is lost.
                    self.stats.frames_lost += len(self._in_flight)
                    self._in_flight.clear()
                    break
                failures += 1
                reason = self._check_retryable(outcome, failures)
                resend, lost = self._collect_unanswered()
                if self._source_done and not resend and (self._credits_on or self._outbox.empty()):
                    break
                delay = self._config.backoff.delay_s(failures, self._rng)
                self.stats.state = StreamState.RECONNECTING
                self.stats.reconnects += 1
                self.stats.last_error = reason
                log.warning("stream broke (%s); reconnect %d in %.2fs", reason, failures, delay)
                yield Reconnecting(failures, delay, reason, lost)
                await asyncio.sleep(delay)
            self.stats.state = StreamState.FINISHED
        except BaseException:
            self.stats.state = StreamState.FAILED
            raise
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        if self._source_error is not None:
            raise self._source_error

    def _check_retryable(self, outcome: str | grpc.aio.AioRpcError, failures: int) -> str:
        if isinstance(outcome, grpc.aio.AioRpcError):
            code, details = outcome.code(), outcome.details() or ""
            reason = f"{code.name}: {details}"
            if code not in RETRYABLE_CODES:
                self.stats.last_error = reason
                raise StreamFailed(code, reason)
            if "handshake" in details.lower():
                # A TLS handshake that fails once fails every time: a plaintext server, or a
                # certificate this client does not trust. Retrying only hides the cause.
                reason = (
                    "TLS handshake failed (is the server plaintext? then drop --tls; or does "
                    f"--ca not sign its certificate?): {details}"
                )
                self.stats.last_error = reason
                raise StreamFailed(code, reason)
        else:
            code, reason = grpc.StatusCode.UNAVAILABLE, outcome
        limit = self._config.backoff.max_attempts
        if limit and failures >= limit:
            self.stats.last_error = reason
            raise StreamFailed(code, f"gave up after {failures} attempts: {reason}")
        return reason

    def _collect_unanswered(self) -> tuple[list[_Outgoing], int]:
        """Frames the broken connection never answered: re-send (BLOCK) or write off."""
        unanswered = list(self._in_flight.values())
        self._in_flight.clear()
        self._room.set()
        if self._config.overload_policy is OverloadPolicy.BLOCK:
            return unanswered, 0
        self.stats.frames_lost += len(unanswered)
        return [], len(unanswered)

    def _open_request(self) -> pb.StreamRequest:
        config = self._config
        return pb.StreamRequest(
            open=pb.StreamOpen(
                model_name=config.model_name,
                model_version=config.model_version,
                encoding=_WIRE_ENCODING[config.encoding],
                source_fps=config.source_fps,
                overload_policy=_WIRE_POLICY[config.overload_policy],
                max_in_flight=config.max_in_flight,
                results=self._result_options(),
                stream_id=config.stream_id,
                max_age_ms=config.max_age_ms,
                analytics=(
                    analytics_to_pb(config.analytics) if config.analytics is not None else None
                ),
                flow_credits=self._credits_asked,
            )
        )

    def _result_options(self) -> pb.ResultOptions:
        config = self._config
        options = pb.ResultOptions(
            top_k=config.top_k,
            score_threshold=config.score_threshold,
            max_detections=config.max_detections,
            class_ids=config.class_ids,
        )
        if config.region_of_interest is not None:
            x_min, y_min, x_max, y_max = config.region_of_interest
            options.region_of_interest.CopyFrom(
                pb.Region(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max)
            )
        return options

    async def _pump(self, frames: AsyncIterable[CapturedFrame]) -> None:
        """Read the source. Credits on (or not known yet): keep only the newest frame, for the
        sender to encode when it holds a credit. Else encode off the loop and queue; a live
        stream drops the oldest when full."""
        config = self._config
        try:
            async for frame in frames:
                if self._credits_on is not False:
                    if self._newest is not None:
                        self.stats.frames_skipped_source += 1
                    self._newest = frame
                    self._newest_ready.set()
                    continue
                outgoing = await asyncio.to_thread(self._encode, self._next_sequence(), frame)
                if config.overload_policy is OverloadPolicy.BLOCK:
                    await self._outbox.put(outgoing)
                    continue
                if self._outbox.full():
                    self._outbox.get_nowait()
                    self.stats.frames_dropped_client += 1
                self._outbox.put_nowait(outgoing)
        except Exception as error:  # noqa: BLE001 - re-raised by stream() once in-flight work ends
            self._source_error = error
        self._source_ended = True
        self._newest_ready.set()
        await self._outbox.put(_END)

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def _encode(self, sequence: int, frame: CapturedFrame) -> _Outgoing:
        encoded = encode_frame(frame, self._config.encoding, self._config.jpeg_quality)
        request = pb.StreamRequest(
            frame=pb.Frame(
                sequence=sequence,
                capture_time_unix_ns=encoded.capture_time_unix_ns,
                data=encoded.data,
                width=encoded.width if encoded.encoding is Encoding.RAW else 0,
                height=encoded.height if encoded.encoding is Encoding.RAW else 0,
            )
        )
        return _Outgoing(sequence, request, frame=frame if self._config.keep_frames else None)

    async def _send(self, call: _Call, resend: list[_Outgoing]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await call.write(self._open_request())
            # Frames follow the server's `opened`: a refused stream (bad token, unknown model)
            # then fails cleanly, with its own status, before megabytes of frames are in flight.
            await self._opened.wait()
            for outgoing in resend:  # already tracked; at most one window of them
                outgoing.sent_at = loop.time()
                await call.write(outgoing.request)
            if self._credits_on:
                await self._send_on_credit(call)
                return
            while not self._source_done:
                await self._wait_for_room()
                item = await self._outbox.get()
                if item is _END:
                    self._source_done = True
                    break
                self._track(item, loop.time())
                self.stats.frames_sent += 1
                await call.write(item.request)
            await call.done_writing()
        except (grpc.RpcError, asyncio.InvalidStateError) as error:
            # The call broke; the reader gets the same status and decides whether to reconnect.
            log.debug("sender stopped: %r", error)

    async def _send_on_credit(self, call: _Call) -> None:
        """Each credit: encode the newest frame read, now, and send it."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_room()
            while self._credits <= 0:
                self._credit_granted.clear()
                await self._credit_granted.wait()
            while self._newest is None and not self._source_ended:
                self._newest_ready.clear()
                await self._newest_ready.wait()
            frame, self._newest = self._newest, None
            if frame is None:  # the source ended and every frame it read was sent or skipped
                break
            try:
                outgoing = await asyncio.to_thread(self._encode, self._next_sequence(), frame)
            except asyncio.CancelledError:  # the connection broke: the frame is still the newest
                if self._newest is None:
                    self._newest = frame
                else:
                    self.stats.frames_skipped_source += 1
                raise
            except Exception as error:  # noqa: BLE001 - re-raised by stream(), like the pump's
                self._source_error = error
                break
            self._credits -= 1
            self._track(outgoing, loop.time())
            self.stats.frames_sent += 1
            await call.write(outgoing.request)
        self._source_done = True
        await call.done_writing()

    def _on_opened(self, opened: pb.StreamOpened) -> None:
        """Credits on or off for this connection (a server restarted as an older one grants
        none); credits are per connection, never more than the server's window."""
        self._credit_limit = max(opened.max_in_flight, 1)
        self._credits = min(opened.flow_credits, self._credit_limit) if self._credits_asked else 0
        self._credits_on = self._credits > 0
        if self._credits_on:
            while not self._outbox.empty():  # encoded for an earlier connection without credits
                if self._outbox.get_nowait() is _END:
                    self._outbox.put_nowait(_END)
                    break
                self.stats.frames_skipped_source += 1
            self._credit_granted.set()
        elif self._newest is not None:  # held while credits were not known: too late now
            self._newest = None
            self.stats.frames_skipped_source += 1

    async def _wait_for_room(self) -> None:
        """At most `window` frames unsettled: memory and any resend stay bounded."""
        while self._window and len(self._in_flight) >= self._window:
            self._room.clear()
            await self._room.wait()

    def _track(self, outgoing: _Outgoing, now: float) -> None:
        outgoing.sent_at = now
        self._in_flight[outgoing.sequence] = outgoing
        if len(self._in_flight) > MAX_TRACKED_IN_FLIGHT:
            self._in_flight.popitem(last=False)
            self.stats.frames_lost += 1

    def _settle(self, sequence: int) -> _Outgoing | None:
        outgoing = self._in_flight.pop(sequence, None)
        self._room.set()
        return outgoing

    async def _read(self, call: _Call) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        while True:
            if self._opened.is_set():
                response = await call.read()
            else:
                async with asyncio.timeout(self._config.open_timeout_s):
                    response = await call.read()
            if not isinstance(response, pb.StreamResponse):
                return  # grpc.aio.EOF: the server closed the stream
            kind = response.WhichOneof("kind")
            if kind == "opened":
                opened = response.opened
                # Twice the server's window keeps its batcher fed across a round trip.
                self._window = self._config.client_window or 2 * max(opened.max_in_flight, 1)
                self._on_opened(opened)
                self.stats.state = StreamState.STREAMING
                self._opened.set()
                yield Connected(
                    opened.stream_id,
                    opened.model_name,
                    opened.model_version,
                    opened.max_in_flight,
                    resent=self._resending,
                )
            elif kind == "credits":
                granted = self._credits + response.credits.frames
                self._credits = min(granted, self._credit_limit)
                self._credit_granted.set()
            elif kind == "result":
                yield self._on_result(response.result, loop.time())
            elif kind == "dropped":
                sequences = tuple(response.dropped.sequences)
                for sequence in sequences:
                    self._settle(sequence)
                self.stats.frames_dropped += len(sequences)
                kind = _DROP_KINDS.get(response.dropped.reason_code, "unspecified")
                if kind == "stale":
                    self.stats.frames_stale += len(sequences)
                yield FramesDropped(sequences, response.dropped.reason, kind)
            elif kind == "error":
                error = response.error
                self._settle(error.sequence)
                self.stats.frames_rejected += 1
                code = _CODE_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN)
                self.stats.last_error = f"frame {error.sequence}: {code.name}: {error.message}"
                yield FrameRejected(error.sequence, code, error.message)
            elif kind == "events":
                events = (analytics_event_from_pb(item) for item in response.events.events)
                yield AnalyticsEvents(tuple(event for event in events if event is not None))

    def _on_result(self, result: pb.FrameResult, now: float) -> FrameResult:
        outgoing = self._settle(result.sequence)
        latency_s = now - outgoing.sent_at if outgoing is not None else None
        labels = tuple(Label(lb.class_id, lb.label, lb.score) for lb in result.labels)
        detections = tuple(
            Detected(
                item.x_min,
                item.y_min,
                item.x_max,
                item.y_max,
                item.score,
                item.class_id,
                item.label,
                item.text,
                polygon=tuple((point.x, point.y) for point in item.polygon),
                keypoints=tuple((point.x, point.y) for point in item.keypoints),
            )  # fmt: skip
            for item in result.detections
        )
        names = tuple(label.label for label in labels) or tuple(item.caption for item in detections)
        if latency_s is not None:
            self.stats.record_result(latency_s, result.capture_time_unix_ns, names)
        else:
            self.stats.frames_answered += 1
        return FrameResult(
            sequence=result.sequence,
            capture_time_unix_ns=result.capture_time_unix_ns,
            model_name=result.model_name,
            model_version=result.model_version,
            labels=labels,
            latency_s=latency_s,
            server_total_us=result.timings.total_us,
            batch_size=result.timings.batch_size,
            detections=detections,
            frame=outgoing.frame if outgoing is not None else None,
        )
