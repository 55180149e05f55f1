"""`edgefleet stream`: stream sources to a server with a live view and a final summary.

`register` stays cheap; grpc, OpenCV and numpy load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

STREAM_HELP = """Stream SOURCE... to a server, one FrameStream per source.

SOURCE is a video file, an rtsp:// or http(s):// URL, an image folder or file, `webcam`,
`webcam:N` or /dev/videoN, or `pattern`, `pattern:640x480` or `pattern:640x480@30` (synthetic
colour bars with the frame counter burned in).

Or `--config cameras.toml`: many cameras, each with its own source, model, result options,
zones, lines, masks and event sinks (MQTT, webhooks); see docs/cli.md."""


def register(app: typer.Typer) -> None:
    app.command("stream", help=STREAM_HELP)(stream_command)


def _comma_list(value: str | None) -> list[str] | None:
    """`0,2` as ["0", "2"] for the settings to check; None when the flag was not given."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def stream_command(
    sources: Annotated[
        list[str] | None, typer.Argument(help="One or more sources.", show_default=False)
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A TOML file of cameras (source, model, zones, lines, sinks) instead of SOURCE.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name on the server (or EDGEFLEET_CLIENT_MODEL)."),
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="Server HOST:PORT (default 127.0.0.1:8001).")
    ] = None,
    model_version: Annotated[
        str | None, typer.Option(help="Pin a version (default: the active one).")
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(help="Frames per second; default: the source's own rate; 0: flat out."),
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="jpeg (saves bandwidth) or raw (default jpeg).")
    ] = None,
    quality: Annotated[int | None, typer.Option(help="JPEG quality 1-100 (default 85).")] = None,
    policy: Annotated[
        str, typer.Option(help="auto, drop-oldest (live) or block (every frame).")
    ] = "auto",
    max_in_flight: Annotated[
        int | None, typer.Option(help="Unanswered frames (default: the server's).")
    ] = None,
    max_age_ms: Annotated[
        int | None, typer.Option(help="Server drops frames older than this as stale; 0: never.")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Labels per result (default: the model's).")
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(help="Drop detections scoring below this (default: the model's)."),
    ] = None,
    max_detections: Annotated[
        int | None,
        typer.Option(help="At most N detections per frame, the best scores (default: no limit)."),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Only these class ids, e.g. 0,2 (default: every class).", metavar="ID,ID,..."
        ),
    ] = None,
    roi: Annotated[
        str | None,
        typer.Option(
            help="Analyse only this region, in source pixels (boxes stay in full-frame pixels).",
            metavar="X_MIN,Y_MIN,X_MAX,Y_MAX",
        ),
    ] = None,
    credits: Annotated[
        bool | None,
        typer.Option(
            help="Live sources send a frame only when the server can take one (flow credits; "
            "off by default; an older server gets every frame as before)."
        ),
    ] = None,
    reconnect: Annotated[
        bool | None,
        typer.Option(
            help="Retry a network camera or webcam that drops or is down at start, with backoff "
            "from 0.5 s up to 10 s, forever (default on)."
        ),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after S seconds.")] = None,
    loop: Annotated[bool | None, typer.Option(help="Repeat files and folders.")] = None,
    retries: Annotated[
        int | None, typer.Option(help="Reconnect attempts in a row; 0: forever (default 8).")
    ] = None,
    output: Annotated[
        tuple[str, Path] | None,
        typer.Option(
            help="`jsonl FILE`: write every result as one JSON line.", metavar="jsonl FILE"
        ),
    ] = None,
    save_video: Annotated[
        Path | None,
        typer.Option(
            help="Write answered frames with boxes, captions and keypoints drawn (.mp4; one "
            "file per source, numbered when there are several)."
        ),
    ] = None,
    clips_dir: Annotated[
        Path | None,
        typer.Option(
            help="Record a clip (.avi, boxes drawn) around each group of analytics events into "
            "this folder, one per camera and event group."
        ),
    ] = None,
    clip_before_s: Annotated[
        float | None, typer.Option(help="Seconds of video before an event (default 2).")
    ] = None,
    clip_after_s: Annotated[
        float | None,
        typer.Option(help="Seconds after the last event of a clip (default 3)."),
    ] = None,
    clip_events: Annotated[
        str | None,
        typer.Option(
            help="Only these kinds start a clip, e.g. zone_enter,line_cross (default: every "
            "analytics event).",
            metavar="KIND,KIND,...",
        ),
    ] = None,
    clip_max_mb: Annotated[
        int | None,
        typer.Option(
            help="Memory per camera for recent frames and unwritten clip frames "
            "(default 256 MiB; frames over it are dropped and counted)."
        ),
    ] = None,
    tls: Annotated[
        bool | None, typer.Option(help="Turn on TLS (system roots unless --ca).")
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate (PEM) to trust.")] = None,
    cert: Annotated[Path | None, typer.Option(help="Client certificate for mutual TLS.")] = None,
    key: Annotated[Path | None, typer.Option(help="Client key for mutual TLS.")] = None,
    server_name: Annotated[str | None, typer.Option(help="Expected TLS server name.")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="EDGEFLEET_TOKEN", help="Auth token (bearer).")
    ] = None,
    live: Annotated[bool, typer.Option(help="Live view (off when not a terminal).")] = True,
) -> None:
    import asyncio
    import json
    import logging
    import os
    import signal
    import sys

    from pydantic import ValidationError
    from rich.console import Console

    from client.cameras import Camera, ConfigError, load_cameras
    from client.display import show_live, summary_table
    from client.runner import StreamRun, run_streams
    from client.security import SecurityConfigError
    from client.settings import ClientSettings
    from client.sources import FrameSource, SourceError, open_source

    console = Console(stderr=True)
    # Warnings too: a skipped unreadable image or a reconnect is said, once, by name.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if output is not None and output[0] != "jsonl":
        raise typer.BadParameter(f"unknown format {output[0]!r}; only jsonl", param_hint="--output")
    if policy not in ("auto", "drop-oldest", "block"):
        raise typer.BadParameter("auto, drop-oldest or block", param_hint="--policy")
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
        raise typer.BadParameter("give SOURCE... or --config FILE, not both", param_hint="SOURCE")
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
        console.print(
            f"edgefleet stream: --{flag.replace('_', '-')} / EDGEFLEET_CLIENT_{field.upper()}: "
            f"{first['msg']}",
            markup=False, highlight=False,
        )  # fmt: skip
        raise typer.Exit(2) from None
    # One path: the flags make one camera per source, all with the same settings.
    cameras = [Camera(name=spec, source=spec, settings=settings) for spec in sources or []]
    if config is not None:
        try:
            cameras = load_cameras(config, settings, model)
        except ConfigError as error:
            console.print(f"edgefleet stream: {error}", markup=False, highlight=False)
            raise typer.Exit(2) from None
    for folder in {camera.settings.clips_dir for camera in cameras} - {None}:
        assert folder is not None
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            console.print(
                f"edgefleet stream: clips folder {folder}: {error.strerror or error}",
                markup=False, highlight=False,
            )  # fmt: skip
            raise typer.Exit(2) from None
    opened: list[FrameSource] = []
    for camera in cameras:
        try:
            opened.append(
                open_source(camera.source, loop=settings.loop, reconnect=settings.reconnect)
            )
        except SourceError as error:
            console.print(f"[red]cannot open source[/] {error}")
            raise typer.Exit(2) from error

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
        if live and console.is_terminal:
            await started_event.wait()
            view = asyncio.create_task(show_live(console, started, done))
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
        console.print(f"[red]TLS settings:[/] {error}")
        raise typer.Exit(2) from error
    except asyncio.CancelledError:
        interrupted, runs = True, started
    # Not a terminal: no 80-column cut; the table takes the width it needs.
    out = Console() if sys.stdout.isatty() else Console(width=400)
    out.print(summary_table(runs))
    if not console.is_terminal:
        for stream_run in runs:
            console.print(json.dumps(stream_run.summary()), soft_wrap=True, highlight=False)
    failed = [stream_run for stream_run in runs if stream_run.error]
    for stream_run in failed:
        console.print(f"[red]{stream_run.source.name} failed:[/] {stream_run.error}")
    if interrupted:
        console.print("[yellow]interrupted[/]: streams abandoned before they finished")
        raise typer.Exit(130)
    # One rule: a source that cannot be opened is a mistake in the command (2), like a missing
    # file; a stream that failed while running is a failure (1).
    if any(stream_run.unopened for stream_run in runs):
        raise typer.Exit(2)
    if failed:
        raise typer.Exit(1)
