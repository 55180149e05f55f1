"""The real `faces` pipeline (MTCNN: pyramid -> P-Net, R-Net, O-Net) over FrameStream."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edgefleet.face_frames import frame_with_faces
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from testkit.edge import running_server
from testkit.faces import copy_faces
from testkit.media import jpeg_bytes, photo

KEYPOINTS = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
ASTRONAUT_FACE = (175, 60, 270, 180)


@pytest.fixture
async def faces_server(tmp_path: Path, built_models: Path):
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    async with running_server(repo) as server:
        yield server


def raw_frame(sequence: int, image: np.ndarray) -> fs.StreamRequest:
    height, width = image.shape[:2]
    return fs.StreamRequest(
        frame=fs.Frame(
            sequence=sequence, capture_time_unix_ns=time.time_ns(), data=image.tobytes(),
            width=width, height=height,
        )
    )  # fmt: skip


async def stream(
    port: int, images: list[np.ndarray], encoding: Any = fs.FRAME_ENCODING_RAW_RGB, **results
) -> list[Any]:
    opening = fs.StreamRequest(
        open=fs.StreamOpen(
            model_name="faces", encoding=encoding, overload_policy=fs.OVERLOAD_POLICY_BLOCK,
            results=fs.ResultOptions(**results),
        )
    )  # fmt: skip
    requests = [opening]
    for sequence, image in enumerate(images):
        if encoding == fs.FRAME_ENCODING_JPEG:
            requests.append(
                fs.StreamRequest(frame=fs.Frame(sequence=sequence, data=jpeg_bytes(image)))
            )
        else:
            requests.append(raw_frame(sequence, image))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        replies = [reply async for reply in stub.Stream(iter(requests))]
    errors = [reply.error for reply in replies if reply.WhichOneof("kind") == "error"]
    assert not errors, errors
    found = [reply.result for reply in replies if reply.WhichOneof("kind") == "result"]
    return sorted(found, key=lambda result: result.sequence)


def within(item: Any, region: tuple[float, float, float, float], slack: float = 2) -> bool:
    x0, y0, x1, y1 = region
    return bool(
        item.x_min >= x0 - slack and item.y_min >= y0 - slack
        and item.x_max <= x1 + slack and item.y_max <= y1 + slack
    )  # fmt: skip


def assert_keypoints_on_the_face(item: Any) -> None:
    assert [point.name for point in item.keypoints] == KEYPOINTS
    for point in item.keypoints:
        assert item.x_min < point.x < item.x_max and item.y_min < point.y < item.y_max
    eyes, nose, mouth = item.keypoints[:2], item.keypoints[2], item.keypoints[3:]
    assert eyes[0].x < eyes[1].x and mouth[0].x < mouth[1].x
    assert max(eyes[0].y, eyes[1].y) < nose.y < min(mouth[0].y, mouth[1].y)


async def test_photos_give_faces_with_landmarks_in_source_pixels(faces_server):
    """JPEG photos: the astronaut has one face, coffee and rocket none."""
    astronaut, coffee, rocket = photo("astronaut"), photo("coffee"), photo("rocket")
    results = await stream(
        faces_server.port, [astronaut, coffee, rocket], encoding=fs.FRAME_ENCODING_JPEG
    )
    assert [len(result.detections) for result in results] == [1, 0, 0]
    (face,) = results[0].detections
    assert face.label == "face" and face.score > 0.95
    assert within(face, (165, 50, 280, 190)), face
    x0, y0, x1, y1 = ASTRONAUT_FACE
    overlap = max(0, min(face.x_max, x1) - max(face.x_min, x0)) * max(
        0, min(face.y_max, y1) - max(face.y_min, y0)
    )
    assert overlap > 0.7 * (x1 - x0) * (y1 - y0)
    assert_keypoints_on_the_face(face)
    assert results[0].model_name == "faces" and results[0].timings.inference_us > 0


@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
async def test_five_faces_are_found_where_they_were_pasted(faces_server, size):
    frame = frame_with_faces(size[0], size[1], 5)
    (result,) = await stream(faces_server.port, [frame.image])
    assert len(result.detections) == 5, [(d.x_min, d.y_min, d.score) for d in result.detections]
    for head in frame.heads:
        matching = [item for item in result.detections if within(item, head)]
        assert len(matching) == 1, (head, result.detections)
        assert_keypoints_on_the_face(matching[0])
    scores = [item.score for item in result.detections]
    assert scores == sorted(scores, reverse=True)


# Several pyramid runs at full size: seconds.
@pytest.mark.system
async def test_region_of_interest_and_max_detections(faces_server):
    frame = frame_with_faces(1280, 720, 5)
    # The right part holds the last two heads whole; the third ends at x=700.
    right = fs.Region(x_min=760, y_min=0, x_max=1280, y_max=720)
    (result,) = await stream(faces_server.port, [frame.image], region_of_interest=right)
    # Heads wholly in the right half, found in full-frame coordinates.
    expected = [head for head in frame.heads if head[0] >= 760]
    assert len(result.detections) == len(expected) == 2
    for head in expected:
        assert any(within(item, head) for item in result.detections), head
    (limited,) = await stream(faces_server.port, [frame.image], max_detections=2)
    assert len(limited.detections) == 2
    (strict,) = await stream(faces_server.port, [frame.image], score_threshold=0.99999)
    assert len(strict.detections) < 5


def write_variant(repo: Path, version: str, edit) -> None:
    source = repo / "faces" / "1" / "manifest.json"
    target = repo / "faces" / version
    target.mkdir()
    manifest = json.loads(source.read_text())
    manifest["version"] = version
    edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m["pipeline"]["stages"][0].update(model="mtcnn_rnet"),
            "member 'mtcnn_rnet': a pyramid stage needs a fully convolutional model",
        ),
        (
            lambda m: m["pipeline"]["stages"][2]["cascade"].update(score_output="face"),
            "member 'mtcnn_onet': a refine stage reads outputs face, which the model lacks",
        ),
        (
            lambda m: m["pipeline"]["stages"][1].update(model="mtcnn_gone"),
            "member 'mtcnn_gone' cannot be loaded",
        ),
    ],
)
async def test_a_member_unfit_for_its_stage_fails_the_load_and_version_1_keeps_serving(
    faces_server, edit, message
):
    repo = faces_server.settings.repository
    write_variant(repo, "2", edit)
    with pytest.raises(Exception, match=message):
        await faces_server.core.load_model("faces", "2")
    assert faces_server.core.active_version("faces") == "1"
    (result,) = await stream(faces_server.port, [photo("astronaut")])
    assert result.model_version == "1" and len(result.detections) == 1


async def test_manifest_thresholds_apply(faces_server):
    """Stage thresholds come from the manifest: an O-Net threshold of 1 passes nothing."""
    repo = faces_server.settings.repository
    write_variant(repo, "2", lambda m: m["pipeline"]["stages"][2]["cascade"].update(threshold=1))
    await faces_server.core.load_model("faces", "2")
    (result,) = await stream(faces_server.port, [photo("astronaut")])
    assert result.model_version == "2" and len(result.detections) == 0


async def test_a_live_camera_gets_whole_frames_and_the_freshest_one(faces_server):
    """DROP_OLDEST with one frame in flight, frames sent far faster than the cascade runs: each
    frame is answered whole (all stages, its faces) or reported dropped, never half-done, and
    the last frame sent is answered."""
    image = frame_with_faces(640, 480, 1).image
    count = 12
    requests = [
        fs.StreamRequest(
            open=fs.StreamOpen(
                model_name="faces",
                encoding=fs.FRAME_ENCODING_RAW_RGB,
                max_in_flight=1,
                overload_policy=fs.OVERLOAD_POLICY_DROP_OLDEST,
            )
        )  # fmt: skip
    ] + [raw_frame(sequence, image) for sequence in range(count)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{faces_server.port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        replies = [reply async for reply in stub.Stream(iter(requests))]
    answered = [reply.result for reply in replies if reply.WhichOneof("kind") == "result"]
    dropped = [seq for reply in replies if reply.WhichOneof("kind") == "dropped"
               for seq in reply.dropped.sequences]  # fmt: skip
    assert not [reply for reply in replies if reply.WhichOneof("kind") == "error"]
    sequences = [result.sequence for result in answered]
    assert sorted(sequences + dropped) == list(range(count))
    assert dropped and sequences[-1] == count - 1
    assert all(len(result.detections) == 1 for result in answered)
