"""Run several sources at once, one FrameStream each over one shared channel.

This is how one box with many cameras looks to the server. `run_streams` is the async entry
point; `run` is the thin synchronous helper for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from client.backoff import BackoffPolicy
from client.cameras import Camera
from client.clips import ClipRecorder
from client.events import CameraStatus, EventKind, event_document
from client.frames import CapturedFrame
from client.overlay import VideoSink
from client.security import ChannelSecurity, open_channel
from client.settings import ClientSettings
from client.sinks import DRAIN_S, EventSink, drain
from client.sources import FrameSource, SourceError, paced, until_stopped
from client.stats import StatsSnapshot, StreamState, StreamStats
from client.stream import (
    AnalyticsEvents,
    Connected,
    FrameRejected,
    FrameResult,
    FramesDropped,
    FrameStreamClient,
    OverloadPolicy,
    Reconnecting,
    StreamConfig,
    StreamEvent,
    StreamFailed,
)


@dataclass
class StreamRun:
    """One source's stream: live stats while running, elapsed time and error once done."""

    source: FrameSource
    stats: StreamStats
    started_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None
    # The source itself could not be opened (not a video, no images): a mistake in the command.
    unopened: bool = False
    # The camera's name in events (its config-file name; the source for a command-line one).
    camera: str = ""
    # Where its events go; each counts what it delivered and dropped.
    sinks: list[EventSink] = field(default_factory=list)
    # Analytics events received from the server, and camera down/up seen here.
    events: int = 0
    # Clips around its analytics events (--clips-dir / clips_dir), when asked for.
    clips: ClipRecorder | None = None
    # Frames the source gave (0 at the end with a camera error: it never came up).
    frames_read: int = 0

    def publish(self, document: dict[str, object]) -> None:
        """Hand an event to every sink; never waits (a full sink drops its oldest)."""
        self.events += 1
        for sink in self.sinks:
            sink.offer(document)

    def elapsed_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return max(end - self.started_at, 1e-9) if self.started_at else 0.0

    def summary(self) -> dict[str, object]:
        snapshot = self.stats.snapshot()
        elapsed = self.elapsed_s()
        return {
            "source": self.source.name,
            **snapshot.as_dict(),
            "elapsed_s": round(elapsed, 3),
            "average_fps": round(snapshot.frames_answered / elapsed, 2) if elapsed else 0.0,
            "error": self.error,
            "camera_error": self.source.health.last_error,
            "events": self.events,
            "sinks": [{"sink": sink.name, **sink.stats.as_dict()} for sink in self.sinks],
            **({"clips": self.clips.stats.as_dict()} if self.clips is not None else {}),
        }


def security_from(settings: ClientSettings) -> ChannelSecurity:
    return ChannelSecurity(
        tls=settings.tls,
        ca_cert=settings.tls_ca,
        client_cert=settings.tls_cert,
        client_key=settings.tls_key,
        token=settings.token.get_secret_value() if settings.token else None,
        server_name=settings.tls_server_name,
    )


def stream_config(
    settings: ClientSettings, source: FrameSource, index: int, camera: Camera | None = None
) -> StreamConfig:
    stream_id = f"{index}:{source.name}"
    if camera is not None:
        settings = camera.settings
        stream_id = camera.stream_id or stream_id
    drop_oldest = source.live if settings.drop_oldest is None else settings.drop_oldest
    return StreamConfig(
        model_name=settings.model,
        model_version=settings.model_version,
        encoding=settings.encoding,
        jpeg_quality=settings.jpeg_quality,
        overload_policy=OverloadPolicy.DROP_OLDEST if drop_oldest else OverloadPolicy.BLOCK,
        max_in_flight=settings.max_in_flight,
        max_age_ms=settings.max_age_ms,
        top_k=settings.top_k,
        stream_id=stream_id[:128],
        source_fps=source.native_fps or 0.0,
        backoff=BackoffPolicy(max_attempts=settings.retries),
        keep_frames=settings.save_video is not None or settings.clips_dir is not None,
        score_threshold=settings.score_threshold,
        max_detections=settings.max_detections,
        class_ids=settings.classes,
        region_of_interest=settings.roi,
        analytics=camera.analytics if camera is not None else None,
        flow_credits=settings.flow_credits,
    )


def event_record(stream: str, event: StreamEvent) -> dict[str, object] | None:
    """The JSONL line for an event (None for events not worth a line)."""
    if isinstance(event, FrameResult):
        return {
            "stream": stream,
            "event": "result",
            "sequence": event.sequence,
            "capture_time_unix_ns": event.capture_time_unix_ns,
            "model_version": event.model_version,
            "labels": [
                {"class_id": lb.class_id, "label": lb.label, "score": round(lb.score, 5)}
                for lb in event.labels
            ],
            "detections": [
                {
                    "box": [round(v, 1) for v in (d.x_min, d.y_min, d.x_max, d.y_max)],
                    "score": round(d.score, 5),
                    "class_id": d.class_id,
                    "label": d.label,
                    **({"text": d.text} if d.text else {}),
                    **(
                        {"keypoints": [list(point) for point in d.keypoints]} if d.keypoints else {}
                    ),
                }  # fmt: skip
                for d in event.detections
            ],
            "latency_ms": None if event.latency_s is None else round(event.latency_s * 1e3, 3),
            "server_total_us": event.server_total_us,
            "batch_size": event.batch_size,
        }
    if isinstance(event, FramesDropped):
        return {"stream": stream, "event": "dropped", "sequences": list(event.sequences)}
    if isinstance(event, FrameRejected):
        return {
            "stream": stream,
            "event": "rejected",
            "sequence": event.sequence,
            "code": event.code.name,
            "message": event.message,
        }
    if isinstance(event, Reconnecting):
        return {
            "stream": stream,
            "event": "reconnecting",
            "attempt": event.attempt,
            "reason": event.reason,
            "frames_lost": event.frames_lost,
        }
    return None


# Frames remembered for their index and origin until their result comes back.
_KEPT_FOR_ORIGIN = 4096


async def _numbered(
    frames: AsyncIterator[CapturedFrame], origins: dict[int, tuple[int, str]]
) -> AsyncIterator[CapturedFrame]:
    """Remember each frame's index in its source (and file name) by capture time."""
    index = 0
    async for frame in frames:
        origins[frame.capture_time_unix_ns] = (index, frame.origin)
        if len(origins) > _KEPT_FOR_ORIGIN:
            del origins[next(iter(origins))]
        index += 1
        yield frame


async def _counted(
    frames: AsyncIterator[CapturedFrame], run: StreamRun
) -> AsyncIterator[CapturedFrame]:
    async for frame in frames:
        run.frames_read += 1
        yield frame


async def _on_timeline(
    frames: AsyncIterator[CapturedFrame], fps: float
) -> AsyncIterator[CapturedFrame]:
    """Stamp a recorded video's frames 1/fps apart from its first one. Read times are not
    the video's: a BLOCK stream reads the next frame only when the server has room, so frames
    read late or in bursts would make a steadily moving object look like it jumps, and the
    server's tracker (which predicts by capture time) would lose it."""
    start_ns = 0
    index = 0
    async for frame in frames:
        if index == 0:
            start_ns = frame.capture_time_unix_ns
        yield dataclasses.replace(frame, capture_time_unix_ns=start_ns + round(index * 1e9 / fps))
        index += 1


def video_path(path: Path, index: int, sources: int) -> Path:
    """The one path for one source; `out-0.mp4`, `out-1.mp4`, ... for several."""
    return path if sources == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


async def _run_one(
    client: FrameStreamClient,
    run: StreamRun,
    fps: float | None,
    stop: asyncio.Event,
    sink: IO[str] | None,
    video: VideoSink | None = None,
) -> None:
    run.started_at = time.monotonic()
    # No rate given: play at the source's own rate (live sources pace themselves: None).
    rate = fps if fps is not None else run.source.native_fps
    frames = until_stopped(paced(run.source.frames(), rate), stop)
    if not run.source.live and rate:
        frames = _on_timeline(frames, rate)
    origins: dict[int, tuple[int, str]] = {}
    if sink is not None:
        frames = _numbered(frames, origins)
    stream_id = ""
    frames = _counted(frames, run)
    try:
        async for event in client.stream(frames):
            if isinstance(event, Connected):
                stream_id = event.stream_id
            if run.clips is not None:
                if isinstance(event, FrameResult) and event.frame is not None:
                    capture_ns, pixels = event.capture_time_unix_ns, event.frame.pixels_bgr
                    run.clips.frame(capture_ns, pixels, event.detections)
                elif isinstance(event, AnalyticsEvents):
                    for item in event.events:
                        run.clips.event(item)
            if isinstance(event, AnalyticsEvents):
                documents = [event_document(run.camera, item) for item in event.events]
                for document in documents:
                    run.publish(document)
                if sink is not None:
                    # The same documents (ids included) as the MQTT and webhook sinks get.
                    line: dict[str, object] = {
                        "stream": run.source.name, "event": "analytics",
                        "stream_id": stream_id, "events": documents,
                    }  # fmt: skip
                    sink.write(json.dumps(line) + "\n")
            if sink is not None and (record := event_record(run.source.name, event)):
                record["stream_id"] = stream_id
                if isinstance(event, FrameResult):
                    index, origin = origins.pop(event.capture_time_unix_ns, (None, ""))
                    record["frame_index"] = index
                    if origin:
                        record["file"] = origin
                # Small buffered writes; the OS absorbs them without stalling the loop.
                sink.write(json.dumps(record) + "\n")
            # The stream kept each frame in flight (keep_frames): every answered one is written.
            if video is not None and isinstance(event, FrameResult) and event.frame is not None:
                await asyncio.to_thread(video.write, event.frame.pixels_bgr, event.detections)
        if run.frames_read == 0 and run.source.health.last_error is not None:
            # Retried until the run ended, and not one frame: that is no success.
            raise SourceError(
                run.source.name, f"the camera never came up: {run.source.health.last_error}"
            )
    except (StreamFailed, SourceError) as error:
        run.error = str(error)
        run.stats.last_error = str(error)
        run.stats.state = StreamState.FAILED
    finally:
        run.finished_at = time.monotonic()
        if video is not None:
            video.close()
        if run.clips is not None:
            # The open clip is cut at the stream's end; its writer finishes off the loop.
            await asyncio.to_thread(run.clips.close)


async def run_streams(
    settings: ClientSettings,
    sources: Sequence[FrameSource],
    stop: asyncio.Event | None = None,
    on_start: Callable[[list[StreamRun]], None] | None = None,
    cameras: Sequence[Camera] | None = None,
) -> list[StreamRun]:
    """Stream every source until it ends, `duration_s` passes or `stop` is set.

    `cameras` (one per source, in order) gives each stream its own settings, analytics and
    event sinks; without them every source streams with `settings`."""
    stop = stop if stop is not None else asyncio.Event()
    security = security_from(settings)
    if cameras is not None and len(cameras) != len(sources):
        raise ValueError("one camera per source")
    runs = [
        StreamRun(
            source,
            StreamStats(source=source.health),
            camera=cameras[index].name if cameras else source.name,
            sinks=[target.build() for target in cameras[index].sinks] if cameras else [],
        )
        for index, source in enumerate(sources)
    ]
    for stream_run in runs:
        if stream_run.sinks:
            stream_run.source.health.listener = _camera_events(stream_run)
    senders = [
        asyncio.create_task(sink.run(), name=f"sink {sink.name}")
        for stream_run in runs
        for sink in stream_run.sinks
    ]
    try:
        return await _run_all(settings, security, runs, stop, on_start, cameras)
    finally:
        # Events queued at the end get a moment to go out; what is left is counted dropped.
        await drain([sink for r in runs for sink in r.sinks], senders, DRAIN_S)


def _camera_events(stream_run: StreamRun) -> Callable[[bool, str], None]:
    def changed(down: bool, reason: str) -> None:
        kind = EventKind.CAMERA_DOWN if down else EventKind.CAMERA_UP
        stream_run.publish(event_document(stream_run.camera, CameraStatus(kind, reason)))

    return changed


async def _run_all(
    settings: ClientSettings,
    security: ChannelSecurity,
    runs: list[StreamRun],
    stop: asyncio.Event,
    on_start: Callable[[list[StreamRun]], None] | None,
    cameras: Sequence[Camera] | None,
) -> list[StreamRun]:
    sources = [stream_run.source for stream_run in runs]
    # Open every source first: a bad one is reported by name before any stream starts, a video
    # file's own fps is known for pacing, and the capture opened here is the one streamed (a
    # camera may take one connection only). A live camera that is down is retried, not refused.
    opened = await asyncio.gather(*(source.open() for source in sources), return_exceptions=True)
    for stream_run, outcome in zip(runs, opened, strict=True):
        if isinstance(outcome, SourceError):
            stream_run.unopened = True
            stream_run.error = str(outcome)
            stream_run.stats.last_error = str(outcome)
            stream_run.stats.state = StreamState.FAILED
        elif isinstance(outcome, BaseException):
            raise outcome
    if on_start is not None:
        on_start(runs)
    with contextlib.ExitStack() as files:
        sink = None
        if settings.output_jsonl is not None:
            path = Path(settings.output_jsonl)
            sink = files.enter_context(await asyncio.to_thread(path.open, "w", encoding="utf-8"))
        async with open_channel(settings.server, security) as channel:
            clients = [
                FrameStreamClient(
                    channel,
                    stream_config(settings, run.source, index, cameras[index] if cameras else None),
                    security.call_metadata(),
                    stats=run.stats,
                )
                for index, run in enumerate(runs)
            ]
            timer = None
            if settings.duration_s is not None:
                timer = asyncio.create_task(_stop_after(stop, settings.duration_s))
            try:
                async with asyncio.TaskGroup() as group:
                    for index, (client, run) in enumerate(zip(clients, runs, strict=True)):
                        video = (
                            VideoSink(
                                video_path(settings.save_video, index, len(runs)),
                                settings.fps or run.source.native_fps or 30.0,
                            )
                            if settings.save_video is not None
                            else None
                        )
                        if run.error is None:
                            run.clips = _clip_recorder(
                                run, cameras[index] if cameras else None, settings
                            )
                            group.create_task(
                                _run_one(client, run, settings.fps, stop, sink, video)
                            )
            finally:
                if timer is not None:
                    timer.cancel()
                    await asyncio.gather(timer, return_exceptions=True)
    return runs


def _clip_recorder(
    run: StreamRun, camera: Camera | None, settings: ClientSettings
) -> ClipRecorder | None:
    own = camera.settings if camera is not None else settings
    clips = own.clip_settings()
    if clips is None:
        return None
    return ClipRecorder(run.camera, clips, own.fps or run.source.native_fps or 30.0)


async def _stop_after(stop: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set()


def run(settings: ClientSettings, sources: Sequence[FrameSource]) -> list[StatsSnapshot]:
    """Synchronous helper for scripts: stream the sources, return each one's final stats."""
    runs = asyncio.run(run_streams(settings, sources))
    return [stream_run.stats.snapshot() for stream_run in runs]
