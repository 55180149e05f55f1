"""Photos and encoded frames for tests and benchmarks: scikit-image's bundled photos, their JPEG
and PNG bytes, camera frames, and a short video of them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skimage_data

from client.frames import CapturedFrame

# ImageNet classes a correct classifier must give these skimage photos (top-1).
EXPECTED_TOP1 = {
    "chelsea": {"Egyptian cat", "tabby, tabby cat", "tiger cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
}

# The photos the test video shows, in order, and how many frames each one lasts.
VIDEO_SCENES = (("chelsea", 6), ("coffee", 6))
VIDEO_FPS = 10.0
VIDEO_FRAMES = sum(frames for _, frames in VIDEO_SCENES)


def photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from scikit-image's bundled data."""
    image: np.ndarray = getattr(skimage_data, name)()
    return image


def resized_photo(name: str, width: int, height: int) -> np.ndarray:
    """The RGB photo scaled to width x height (area interpolation, as a camera's scaler)."""
    image: np.ndarray = cv2.resize(photo(name), (width, height), interpolation=cv2.INTER_AREA)
    return image


def jpeg_bytes(image_rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return encoded.tobytes()


def png_bytes(image_rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def jpeg_frames(names: Sequence[str], width: int, height: int, quality: int = 85) -> list[bytes]:
    """The photos as width x height JPEG camera frames, encoded once."""
    return [jpeg_bytes(resized_photo(name, width, height), quality) for name in names]


async def photo_frames(name: str, count: int = 1) -> AsyncIterator[CapturedFrame]:
    """The photo as `count` frames captured now, in BGR as the client's sources produce them."""
    pixels = cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR)
    for _ in range(count):
        yield CapturedFrame(pixels, time.time_ns())


def write_scenes_video(path: Path, size: tuple[int, int] = (320, 240)) -> Path:
    """An MJPG .avi written with OpenCV (the client's video library): VIDEO_SCENES at VIDEO_FPS."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), VIDEO_FPS, size)
    assert writer.isOpened(), "OpenCV has no MJPG writer"
    for name, frames in VIDEO_SCENES:
        image = cv2.resize(cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR), size)
        for _ in range(frames):
            writer.write(image)
    writer.release()
    return path


def text_grid(width: int, height: int, columns: int, rows: int, seed: int = 0) -> np.ndarray:
    """A page of `columns` x `rows` short printed words (black on white, RGB): every word is
    a text line for an OCR detector. A 640x480 grid of 280 lines costs PP-OCR ~12 CPU-s, a
    normal photo 0.3: the hostile camera of the fairness tests and benchmarks."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("ABCDEFGHKLMNPRSTUVWXYZ0123456789"))
    image = np.full((height, width, 3), 255, np.uint8)
    cell_w, cell_h = width // columns, height // rows
    scale = min(cell_h / 30, cell_w / 110)
    for row in range(rows):
        for column in range(columns):
            word = "".join(rng.choice(letters, 5))
            origin = (column * cell_w + 4, row * cell_h + int(cell_h * 0.75))
            cv2.putText(image, word, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                        max(1, round(scale * 2)), cv2.LINE_AA)  # fmt: skip
    return image
