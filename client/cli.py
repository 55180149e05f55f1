"""`edgefleet stream`: stream sources to a server with a live view and a final summary.

`register` stays cheap; grpc, OpenCV and numpy load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

STREAM_HELP = """Stream SOURCE... to a server, one FrameStream per source.

SOURCE is a video file, an rtsp:// or http(s):// URL, an image folder or file, `webcam`,
`webcam:N` or /dev/videoN, or `pattern`, `pattern:640x480` or `pattern:640x480@30` (synthetic
colour bars with the frame counter burned in).

Or `--config cameras.toml`: many cameras, each with its own source, model, result options,
zones, lines, masks and event sinks (MQTT, webhooks); see docs/cli.md."""


def register(app: click.Group) -> None:
    app.add_command(stream_command)


def _comma_list(value: str | None) -> list[str] | None:
    """`0,2` as ["0", "2"] for the settings to check; None when the flag was not given."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command("stream", help=STREAM_HELP)
@click.argument("sources", nargs=-1, required=False, metavar="[SOURCE]...")
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    default=None,
    help="A TOML file of cameras (source, model, zones, lines, sinks) instead of SOURCE.",
)
@click.option(
    "--model", "-m", default=None, help="Model name on the server (or EDGEFLEET_CLIENT_MODEL)."
)
@click.option("--server", default=None, help="Server HOST:PORT (default 127.0.0.1:8001).")
@click.option("--model-version", default=None, help="Pin a version (default: the active one).")
@click.option(
    "--fps",
    type=float,
    default=None,
    help="Frames per second; default: the source's own rate; 0: flat out.",
)
@click.option("--encoding", default=None, help="jpeg (saves bandwidth) or raw (default jpeg).")
@click.option("--quality", type=int, default=None, help="JPEG quality 1-100 (default 85).")
@click.option("--policy", default="auto", help="auto, drop-oldest (live) or block (every frame).")
@click.option(
    "--max-in-flight", type=int, default=None, help="Unanswered frames (default: the server's)."
)
@click.option(
    "--max-age-ms",
    type=int,
    default=None,
    help="Server drops frames older than this as stale; 0: never.",
)
@click.option("--top-k", type=int, default=None, help="Labels per result (default: the model's).")
@click.option(
    "--score-threshold",
    type=float,
    default=None,
    help="Drop detections scoring below this (default: the model's).",
)
@click.option(
    "--max-detections",
    type=int,
    default=None,
    help="At most N detections per frame, the best scores (default: no limit).",
)
@click.option(
    "--classes",
    default=None,
    metavar="ID,ID,...",
    help="Only these class ids, e.g. 0,2 (default: every class).",
)
@click.option(
    "--roi",
    default=None,
    metavar="X_MIN,Y_MIN,X_MAX,Y_MAX",
    help="Analyse only this region, in source pixels (boxes stay in full-frame pixels).",
)
@click.option(
    "--credits/--no-credits",
    default=None,
    help="Live sources send a frame only when the server can take one (flow credits; on by default; an older server gets every frame as before).",
)
@click.option(
    "--reconnect/--no-reconnect",
    default=None,
    help="Retry a network camera or webcam that drops or is down at start, with backoff from 0.5 s up to 10 s, forever (default on).",
)
@click.option(
    "--camera-retry-for",
    type=float,
    default=None,
    help="Give up a camera that stays down this many seconds (at start or after a drop); "
    "its stream fails, the others go on (default: retry forever).",
)
@click.option("--duration", type=float, default=None, help="Stop after S seconds.")
@click.option("--loop/--no-loop", default=None, help="Repeat files and folders.")
@click.option(
    "--retries", type=int, default=None, help="Reconnect attempts in a row; 0: forever (default 8)."
)
@click.option(
    "--output",
    type=(str, click.Path(path_type=Path)),
    default=None,
    metavar="jsonl FILE",
    help="`jsonl FILE`: write every result as one JSON line.",
)
@click.option(
    "--save-video",
    type=click.Path(path_type=Path),
    default=None,
    help="Write answered frames with boxes, captions and keypoints drawn (.mp4; one file per source, numbered when there are several).",
)
@click.option(
    "--clips-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Record a clip (.avi, boxes drawn) around each group of analytics events into this folder, one per camera and event group.",
)
@click.option(
    "--clip-before-s",
    type=float,
    default=None,
    help="Seconds of video before an event (default 2).",
)
@click.option(
    "--clip-after-s",
    type=float,
    default=None,
    help="Seconds after the last event of a clip (default 3).",
)
@click.option(
    "--clip-events",
    default=None,
    metavar="KIND,KIND,...",
    help="Only these kinds start a clip, e.g. zone_enter,line_cross (default: every analytics event).",
)
@click.option(
    "--clip-max-mb",
    type=int,
    default=None,
    help="Memory per camera for recent frames and unwritten clip frames (default 256 MiB; frames over it are dropped and counted).",
)
@click.option("--tls/--no-tls", default=None, help="Turn on TLS (system roots unless --ca).")
@click.option(
    "--ca", type=click.Path(path_type=Path), default=None, help="CA certificate (PEM) to trust."
)
@click.option(
    "--cert",
    type=click.Path(path_type=Path),
    default=None,
    help="Client certificate for mutual TLS.",
)
@click.option(
    "--key", type=click.Path(path_type=Path), default=None, help="Client key for mutual TLS."
)
@click.option("--server-name", default=None, help="Expected TLS server name.")
@click.option(
    "--token", default=None, envvar="EDGEFLEET_TOKEN", show_envvar=True, help="Auth token (bearer)."
)
@click.option("--live/--no-live", default=True, help="Live view (off when not a terminal).")
def stream_command(
    sources: tuple[str, ...],
    config: Path | None,
    model: str | None,
    server: str | None,
    model_version: str | None,
    fps: float | None,
    encoding: str | None,
    quality: int | None,
    policy: str,
    max_in_flight: int | None,
    max_age_ms: int | None,
    top_k: int | None,
    score_threshold: float | None,
    max_detections: int | None,
    classes: str | None,
    roi: str | None,
    credits: bool | None,
    reconnect: bool | None,
    camera_retry_for: float | None,
    duration: float | None,
    loop: bool | None,
    retries: int | None,
    output: tuple[str, Path] | None,
    save_video: Path | None,
    clips_dir: Path | None,
    clip_before_s: float | None,
    clip_after_s: float | None,
    clip_events: str | None,
    clip_max_mb: int | None,
    tls: bool | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    server_name: str | None,
    token: str | None,
    live: bool,
) -> None:
    import asyncio
    import json
    import logging
    import os
    import signal
    import sys

    from pydantic import ValidationError

    from client.cameras import Camera, ConfigError, load_cameras
    from client.display import show_live, summary_table
    from client.runner import StreamRun, run_streams
    from client.security import SecurityConfigError
    from client.settings import ClientSettings
    from client.sources import FrameSource, SourceError, open_source

    def say(line: str) -> None:
        click.echo(line, err=True)

    # Warnings too: a skipped unreadable image or a reconnect is said, once, by name.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if output is not None and output[0] != "jsonl":
        raise click.BadParameter(f"unknown format {output[0]!r}; only jsonl", param_hint="--output")
    if policy not in ("auto", "drop-oldest", "block"):
        raise click.BadParameter("auto, drop-oldest or block", param_hint="--policy")
    # Flags given win; the rest come from EDGEFLEET_CLIENT_* variables or the defaults.
    flags: dict[str, Any] = {
        "server": server,
        "model": model,
        "model_version": model_version,
        "fps": fps,
        "encoding": encoding,
        "jpeg_quality": quality,
        "drop_oldest": None if policy == "auto" else policy == "drop-oldest",
        "max_in_flight": max_in_flight,
        "max_age_ms": max_age_ms,
        "top_k": top_k,
        "score_threshold": score_threshold,
        "max_detections": max_detections,
        "classes": _comma_list(classes),
        "roi": _comma_list(roi),
        "reconnect": reconnect,
        "camera_retry_for_s": camera_retry_for,
        "flow_credits": credits,
        "duration_s": duration,
        "loop": loop,
        "retries": retries,
        "tls": tls,
        "tls_ca": ca,
        "tls_cert": cert,
        "tls_key": key,
        "tls_server_name": server_name,
        "token": token,
        "output_jsonl": output[1] if output else None,
        "save_video": save_video,
        "clips_dir": clips_dir,
        "clip_before_s": clip_before_s,
        "clip_after_s": clip_after_s,
        "clip_events": _comma_list(clip_events),
        "clip_max_mb": clip_max_mb,
    }
    if bool(sources) == (config is not None):
        raise click.BadParameter("give SOURCE... or --config FILE, not both", param_hint="SOURCE")
    given = {name: value for name, value in flags.items() if value is not None}
    if config is not None:
        # The file may name each camera's model; an empty one here is checked per camera.
        given.setdefault("model", os.environ.get("EDGEFLEET_CLIENT_MODEL", ""))
    try:
        settings = ClientSettings(**given)
    except ValidationError as error:
        first = error.errors()[0]
        # The flag is the field's name; `roi.2` is the third number of --roi.
        field = str(first["loc"][0]) if first["loc"] else "settings"
        flag = {"jpeg_quality": "quality", "duration_s": "duration"}.get(field, field)
        say(
            f"edgefleet stream: --{flag.replace('_', '-')} / EDGEFLEET_CLIENT_{field.upper()}: "
            f"{first['msg']}"
        )
        raise click.exceptions.Exit(2) from None
    # One path: the flags make one camera per source, all with the same settings.
    cameras = [Camera(name=spec, source=spec, settings=settings) for spec in sources or []]
    if config is not None:
        try:
            cameras = load_cameras(config, settings, model)
        except ConfigError as error:
            say(f"edgefleet stream: {error}")
            raise click.exceptions.Exit(2) from None
    for folder in {camera.settings.clips_dir for camera in cameras} - {None}:
        assert folder is not None
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            say(f"edgefleet stream: clips folder {folder}: {error.strerror or error}")
            raise click.exceptions.Exit(2) from None
    opened: list[FrameSource] = []
    for camera in cameras:
        try:
            opened.append(
                open_source(
                    camera.source,
                    loop=settings.loop,
                    reconnect=settings.reconnect,
                    retry_for_s=settings.camera_retry_for_s,
                )
            )
        except SourceError as error:
            say(f"cannot open source {error}")
            raise click.exceptions.Exit(2) from error

    started: list[StreamRun] = []

    async def main() -> list[StreamRun]:
        stop = asyncio.Event()
        streams: asyncio.Task[list[StreamRun]] | None = None

        def interrupt() -> None:
            # First Ctrl-C ends the sources (frames already sent are still answered); a second
            # one abandons the streams, e.g. while they wait for a server that is gone.
            if stop.is_set() and streams is not None:
                streams.cancel()
            stop.set()

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupt)
        done = asyncio.Event()
        started_event = asyncio.Event()

        def on_start(runs: list[StreamRun]) -> None:
            started.extend(runs)
            started_event.set()

        streams = asyncio.create_task(run_streams(settings, opened, stop, on_start, cameras))
        view = None
        if live and sys.stderr.isatty():
            await started_event.wait()
            view = asyncio.create_task(show_live(sys.stderr, started, done))
        try:
            return await streams
        finally:
            done.set()
            if view is not None:
                await view

    interrupted = False
    try:
        runs = asyncio.run(main())
    except SecurityConfigError as error:
        say(f"TLS settings: {error}")
        raise click.exceptions.Exit(2) from error
    except asyncio.CancelledError:
        interrupted, runs = True, started
    # The table takes the width it needs (a terminal narrower than it wraps the lines).
    click.echo(summary_table(runs))
    if not sys.stderr.isatty():
        for stream_run in runs:
            say(json.dumps(stream_run.summary()))
    failed = [stream_run for stream_run in runs if stream_run.error]
    for stream_run in failed:
        say(f"{stream_run.source.name} failed: {stream_run.error}")
    if interrupted:
        say("interrupted: streams abandoned before they finished")
        raise click.exceptions.Exit(130)
    # One rule: a source that cannot be opened is a mistake in the command (2), like a missing
    # file; a stream that failed while running is a failure (1).
    if any(stream_run.unopened for stream_run in runs):
        raise click.exceptions.Exit(2)
    if failed:
        raise click.exceptions.Exit(1)
