"""A test camera: FrameStream requests from real photos, paced or as fast as possible."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from testkit.media import jpeg_bytes, photo, png_bytes


def encode(image_rgb: np.ndarray, encoding: fs.FrameEncoding) -> tuple[bytes, int, int]:
    height, width = image_rgb.shape[:2]
    if encoding == fs.FRAME_ENCODING_JPEG:
        return jpeg_bytes(image_rgb), width, height
    if encoding == fs.FRAME_ENCODING_PNG:
        return png_bytes(image_rgb), width, height
    if encoding == fs.FRAME_ENCODING_RAW_BGR:
        return np.ascontiguousarray(image_rgb[:, :, ::-1]).tobytes(), width, height
    return np.ascontiguousarray(image_rgb).tobytes(), width, height


async def camera(
    model: str,
    photos: Sequence[str],
    count: int,
    *,
    encoding: fs.FrameEncoding = fs.FRAME_ENCODING_JPEG,
    fps: float = 0.0,
    policy: fs.OverloadPolicy = fs.OVERLOAD_POLICY_DROP_OLDEST,
    max_in_flight: int = 0,
    top_k: int = 3,
    stream_id: str = "",
    max_age_ms: int = 0,
) -> AsyncIterator[fs.StreamRequest]:
    encoded = [encode(photo(name), encoding) for name in photos]
    yield fs.StreamRequest(
        open=fs.StreamOpen(
            model_name=model, encoding=encoding, source_fps=fps, overload_policy=policy,
            max_in_flight=max_in_flight, results=fs.ResultOptions(top_k=top_k),
            stream_id=stream_id, max_age_ms=max_age_ms,
        )
    )  # fmt: skip
    start = asyncio.get_running_loop().time()
    for sequence in range(count):
        if fps:
            delay = start + sequence / fps - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
        data, width, height = encoded[sequence % len(encoded)]
        yield fs.StreamRequest(
            frame=fs.Frame(
                sequence=sequence, capture_time_unix_ns=time.time_ns(), data=data,
                width=width, height=height,
            )
        )  # fmt: skip


async def collect(responses: AsyncIterator[fs.StreamResponse]) -> dict[str, list[Any]]:
    """Sort a stream's responses by kind."""
    seen: dict[str, list[Any]] = {
        "opened": [],
        "result": [],
        "dropped": [],
        "error": [],
        "events": [],
        "credits": [],
    }
    async for response in responses:
        kind = response.WhichOneof("kind")
        seen[kind].append(getattr(response, kind))
    return seen
