"""`edgefleet stream ... --model faces --save-video out.mkv` writes the frames with the faces'
boxes and landmarks drawn, where the server found them. The .mkv is lossless (FFV1), so a
3-pixel landmark dot is exactly where it was drawn; frames are written in the order they are
answered, which is not always the order they were sent."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from client.overlay import BOX, POINT
from edgefleet.face_frames import frame_with_faces, photo
from testkit.edge import running_server
from testkit.faces import copy_faces
from testkit.media import png_bytes
from testkit.repositories import ROOT

# Runs the edgefleet CLI as a child process: a system test.
pytestmark = pytest.mark.system


def distance(pixels: np.ndarray, x: float, y: float, colour: tuple[int, int, int]) -> int:
    """How far the closest pixel of the 5x5 patch at (x, y) is from `colour` (BGR)."""
    patch = pixels[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3].reshape(-1, 3)
    return int(np.abs(patch.astype(np.int16) - np.array(colour)).max(axis=1).min())


def near(
    pixels: np.ndarray, x: float, y: float, colour: tuple[int, int, int], source: np.ndarray
) -> bool:
    """The mark is there: some pixel of the patch is close to `colour`, or (video compression
    smears a 3-pixel dot into a busy background; the absolute check alone flaked twice in CI)
    the patch moved clearly toward `colour` compared with the same patch of the source frame."""
    drawn = distance(pixels, x, y, colour)
    return drawn < 70 or drawn < distance(source, x, y, colour) - 60


async def test_saved_video_shows_boxes_and_landmarks(tmp_path: Path, built_models: Path):
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    folder = tmp_path / "frames"
    folder.mkdir()
    faces = frame_with_faces(640, 480, 3).image
    empty = cv2.resize(photo("coffee"), (640, 480))
    (folder / "1-faces.png").write_bytes(png_bytes(faces))
    (folder / "2-coffee.png").write_bytes(png_bytes(empty))
    video, results = tmp_path / "out.mkv", tmp_path / "results.jsonl"
    async with running_server(repo) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet.cli", "stream", str(folder),
            "--server", f"127.0.0.1:{server.port}", "--model", "faces", "--fps", "0",
            "--encoding", "raw", "--save-video", str(video), "--output", "jsonl", str(results),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, stderr.decode()
    records = sorted(
        (json.loads(line) for line in results.read_text().splitlines()),
        key=lambda record: record["sequence"],
    )
    assert [len(record["detections"]) for record in records] == [3, 0]
    capture = cv2.VideoCapture(str(video))
    written = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        written.append(image)
    capture.release()
    assert len(written) == 2 and written[0].shape == (480, 640, 3)
    # Frames are written as they are answered: the photo without faces can come back first.
    faces_bgr = cv2.cvtColor(faces, cv2.COLOR_RGB2BGR)
    drawn, plain = sorted(
        written, key=lambda image: np.abs(image.astype(np.int16) - faces_bgr).mean()
    )
    for item in records[0]["detections"]:
        assert len(item["keypoints"]) == 5
        for x, y in item["keypoints"]:
            assert near(drawn, x, y, POINT, faces_bgr), (x, y)
        # The box's bottom edge, halfway along, is drawn.
        x_min, _, x_max, y_max = item["box"]
        assert near(drawn, (x_min + x_max) / 2, y_max, BOX, faces_bgr), item
    # Nothing found, nothing drawn: the frame is the photo (up to compression).
    source = cv2.cvtColor(empty, cv2.COLOR_RGB2BGR).astype(np.int16)
    assert np.abs(plain.astype(np.int16) - source).mean() < 8
