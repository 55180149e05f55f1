"""`edgefleet demo`: the main job on the built-in defaults, end to end on this machine.

Starts an edge server on the default model repository, streams real photographs (scikit-image's
chelsea, coffee, astronaut, rocket, ...) as a 30 fps camera over a bidirectional FrameStream,
prints every frame's labels, and ends with frames per second and latency p50/p95.
`--model ppocr` streams frames with rendered text (and scikit-image's `text`) to the PP-OCR
pipeline instead and prints what it reads, with the boxes; `--model faces` streams photos
and frames with 0 to 5 people's faces to the MTCNN pipeline and prints each face's box, score
and landmarks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

DEMO_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
# Models that find things rather than label the whole frame get frames with text in them.
TEXT_MODELS = ("ppocr",)
FACE_MODELS = ("faces",)
DEMO_LINES = ("EDGE FLEET 2026", "CAMERA 7 NORTH GATE", "Speed limit 30")


def register(app: click.Group) -> None:
    app.add_command(demo)


@click.command("demo")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=Path("models"),
    help="Model repository built by `make models`.",
)
@click.option("--model", default="efficientnet_lite0", help="Model to stream to.")
@click.option("--frames", type=int, default=90, help="Frames the camera sends.")
@click.option(
    "--fps", type=float, default=30.0, help="Camera frame rate; 0 sends as fast as possible."
)
def demo(
    repository: Path,
    model: str,
    frames: int,
    fps: float,
) -> None:
    """Serve the default model and stream real photos to it as a camera."""
    if not (repository / model).is_dir():
        raise click.BadParameter(f"{repository / model} does not exist: run `make models` first")
    asyncio.run(_run(repository, model, frames, fps))


def text_frames() -> list[Any]:
    """640x480 BGR frames with text drawn on plain and photo backgrounds, and skimage's text."""
    import cv2
    import numpy as np
    from skimage import data

    frames: list[Any] = []
    for index, background in enumerate(("plain", "astronaut", "coffee")):
        if background == "plain":
            image = np.full((480, 640, 3), 235, np.uint8)
        else:
            image = cv2.resize(
                cv2.cvtColor(getattr(data, background)(), cv2.COLOR_RGB2BGR), (640, 480)
            )
        for line, text in enumerate(DEMO_LINES[: index + 1]):
            x, y = 60, 120 + 110 * line
            (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.4, 3)
            cv2.rectangle(
                image,
                (x - 10, y - height - 12),
                (x + width + 10, y + base + 8),
                (255, 255, 255),
                -1,
            )
            cv2.putText(
                image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (20, 20, 20), 3, cv2.LINE_AA
            )
        frames.append(image)
    page = data.text()  # type: ignore[no-untyped-call]
    frames.append(np.asarray(cv2.cvtColor(page, cv2.COLOR_GRAY2BGR)))
    return frames


def face_frames() -> list[Any]:
    """BGR frames with faces: the astronaut's photo, 640x480 frames with 1 to 5 people's faces
    pasted at known places, and coffee (none)."""
    import cv2

    from edgefleet.face_frames import frame_with_faces, photo

    images = [photo("astronaut")]
    images += [frame_with_faces(640, 480, count).image for count in (1, 3, 5)]
    images.append(photo("coffee"))
    return [cv2.cvtColor(image, cv2.COLOR_RGB2BGR) for image in images]


async def _photos_as_camera(count: int, fps: float, model: str = "") -> AsyncIterator[object]:
    import cv2
    from skimage import data

    from client.frames import CapturedFrame

    if model in TEXT_MODELS:
        images = text_frames()
    elif model in FACE_MODELS:
        images = face_frames()
    else:
        images = [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR) for name in DEMO_PHOTOS]
        images = [image for image in images if image.ndim == 3]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(count):
        if fps > 0:
            await asyncio.sleep(max(0.0, start + index / fps - loop.time()))
        yield CapturedFrame(images[index % len(images)], time.time_ns())


async def _run(repository: Path, model: str, count: int, fps: float) -> None:
    import grpc

    from client.stream import FrameResult, FramesDropped, FrameStreamClient, StreamConfig
    from common.text_table import TextTable
    from server.app import EdgeServer
    from server.settings import ServerSettings

    started = time.perf_counter()
    server = EdgeServer(
        ServerSettings(
            repository=repository, port=0, metrics_port=-1, http_port=-1, models=(model,)
        )
    )
    port = await server.start()
    click.echo(
        f"edgefleet serving {model} on 127.0.0.1:{port} "
        f"(ready in {time.perf_counter() - started:.2f} s); camera: {count} frames at {fps:g} fps"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = FrameStreamClient(
                channel, StreamConfig(model_name=model, source_fps=fps, top_k=3)
            )
            frames = _photos_as_camera(count, fps, model)
            async for event in client.stream(frames):  # type: ignore[arg-type]
                if isinstance(event, FrameResult):
                    labels = ", ".join(f"{item.label} {item.score:.2f}" for item in event.labels)
                    if event.detections:
                        labels = "; ".join(
                            f"{item.caption!r} {item.score:.2f} at "
                            f"({item.x_min:.0f},{item.y_min:.0f})-({item.x_max:.0f},{item.y_max:.0f})"
                            + (f" {len(item.keypoints)} landmarks" if item.keypoints else "")
                            for item in event.detections
                        )
                    elif model in FACE_MODELS:
                        labels = "no face"
                    latency = f"{event.latency_s * 1000:6.1f} ms" if event.latency_s else "   n/a"
                    click.echo(
                        f"frame {event.sequence:4d}  v{event.model_version}  {latency}  "
                        f"batch {event.batch_size}  {labels}"
                    )
                elif isinstance(event, FramesDropped):
                    click.echo(f"dropped {list(event.sequences)}: {event.reason}")
            stats = client.stats.snapshot()
    finally:
        await server.stop(grace_s=2.0)
    columns = ("frames sent", "answered", "dropped", "fps", "latency p50", "latency p95")
    table = TextTable(*columns, title="edgefleet demo", right=columns)
    table.add_row(
        str(stats.frames_sent), str(stats.frames_answered),
        str(stats.frames_dropped + stats.frames_dropped_client), f"{stats.fps:.1f}",
        f"{stats.latency_p50_ms:.1f} ms" if stats.latency_p50_ms is not None else "n/a",
        f"{stats.latency_p95_ms:.1f} ms" if stats.latency_p95_ms is not None else "n/a",
    )  # fmt: skip
    click.echo(table)
