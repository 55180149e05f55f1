"""The MTCNN cascade (server/vision/mtcnn.py) with the exported networks on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from edgefleet.face_frames import MAX_FACES, frame_with_faces
from server.vision.mtcnn import (
    CascadeOptions,
    Faces,
    StageTimes,
    detect_faces,
    nms,
    pyramid_scales,
    square,
)
from testkit.faces import OnnxNet

# Where the astronaut's face is in skimage.data.astronaut() (512x512): the face from hairline to
# chin and ear to ear, and the eyes, nose and mouth, read off the photo by eye.
FACE = (175, 60, 270, 180)  # x_min, y_min, x_max, y_max
EYES_Y = (90, 115)
MOUTH_Y = (130, 155)


@pytest.fixture(scope="module")
def nets() -> tuple[OnnxNet, OnnxNet, OnnxNet]:
    return OnnxNet("pnet"), OnnxNet("rnet"), OnnxNet("onet")


def detect(image: np.ndarray, nets, **options) -> Faces:
    pnet, rnet, onet = nets
    return detect_faces(image, pnet, rnet, onet, CascadeOptions(**options))


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def assert_landmarks_inside(faces: Faces) -> None:
    for box, points in zip(faces.boxes, faces.landmarks, strict=True):
        x, y = points[:, 0], points[:, 1]
        assert np.all((x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])), (box, points)
        # Left eye left of right eye, eyes above the nose, nose above the mouth corners.
        assert x[0] < x[1] and x[3] < x[4]
        assert max(y[0], y[1]) < y[2] < min(y[3], y[4])


def test_astronaut_has_exactly_one_face_with_landmarks_on_it(nets):
    faces = detect(data.astronaut(), nets)
    assert len(faces) == 1, faces.boxes
    box = faces.boxes[0]
    assert iou(box, FACE) > 0.6, box
    assert faces.scores[0] > 0.95
    assert_landmarks_inside(faces)
    eyes, mouth = faces.landmarks[0, :2, 1], faces.landmarks[0, 3:, 1]
    assert np.all((eyes > EYES_Y[0]) & (eyes < EYES_Y[1])), eyes
    assert np.all((mouth > MOUTH_Y[0]) & (mouth < MOUTH_Y[1])), mouth


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_photos_without_people_have_no_face(nets, name):
    faces = detect(getattr(data, name)(), nets)
    assert len(faces) == 0, faces.boxes
    assert faces.landmarks.shape == (0, 5, 2)


def test_two_pasted_faces_one_at_half_size_are_found_where_they_are(nets):
    """A 1280x720 frame (the rocket photo stretched: no faces of its own) with the astronaut's
    head pasted at full size at (100, 80) and at half size at (900, 400)."""
    astronaut = data.astronaut()
    head = astronaut[20:220, 130:310]  # 180x200 around FACE, with hair and collar
    frame = cv2.resize(data.rocket(), (1280, 720), interpolation=cv2.INTER_AREA)
    small = cv2.resize(head, (90, 100), interpolation=cv2.INTER_AREA)
    frame[80:280, 100:280] = head
    frame[400:500, 900:990] = small
    reference = detect(astronaut, nets).boxes[0]
    # Where the face box must land: the astronaut's own detection, moved (and halved).
    expected = [
        reference + np.array([100 - 130, 80 - 20] * 2, np.float32),
        (reference - np.array([130, 20] * 2, np.float32)) / 2 + np.array([900, 400] * 2),
    ]
    faces = detect(frame, nets)
    assert len(faces) == 2, faces.boxes
    found = sorted(faces.boxes.tolist(), key=lambda box: box[0])
    for box, want in zip(found, expected, strict=True):
        assert iou(box, want) > 0.7, (box, want)
    assert_landmarks_inside(faces)


@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
def test_benchmark_frames_hold_as_many_faces_as_they_say(nets, size):
    """The faces demo and benchmark frames: 0 to 5 heads pasted on a photo, each found once,
    inside the place it was pasted."""
    for count in range(MAX_FACES + 1):
        frame = frame_with_faces(size[0], size[1], count)
        faces = detect(frame.image, nets)
        assert len(faces) == count, (count, faces.boxes)
        for x0, y0, x1, y1 in frame.heads:
            inside = [
                box for box in faces.boxes
                if box[0] >= x0 - 2 and box[1] >= y0 - 2 and box[2] <= x1 + 2 and box[3] <= y1 + 2
            ]  # fmt: skip
            assert len(inside) == 1, ((x0, y0, x1, y1), faces.boxes)


def test_bgr_frames_give_the_same_faces(nets):
    pnet, rnet, onet = nets
    rgb = frame_with_faces(640, 480, 3).image
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    want = detect_faces(rgb, pnet, rnet, onet)
    got = detect_faces(bgr, pnet, rnet, onet, color="bgr")
    assert len(want) == 3
    assert np.allclose(got.boxes, want.boxes, atol=1e-3)
    assert np.allclose(got.landmarks, want.landmarks, atol=1e-3)


def test_min_face_size_leaves_out_smaller_faces(nets):
    """The pyramid starts at min_face_size: a ~45 px face is not searched for when faces must be
    at least 120 px; a ~180 px one in the same frame still is. (P-Net accepts faces somewhat
    smaller than its window, so the limit is soft: hence the wide margin.)"""
    head = data.astronaut()[20:220, 130:310]
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[40:440, 20:380] = cv2.resize(head, (360, 400), interpolation=cv2.INTER_LINEAR)
    frame[300:400, 450:540] = cv2.resize(head, (90, 100), interpolation=cv2.INTER_AREA)
    assert len(detect(frame, nets)) == 2
    large_only = detect(frame, nets, min_face_size=120)
    assert len(large_only) == 1
    assert large_only.boxes[0, 2] < 380


def test_stage_times_cover_every_stage_and_empty_frames_stop_early(nets):
    pnet, rnet, onet = nets
    times = StageTimes()
    detect_faces(data.astronaut(), pnet, rnet, onet, times=times)
    assert set(times.seconds) == {
        "pyramid", "pnet", "proposals", "rnet_crops", "rnet", "refine", "onet_crops", "onet",
        "finish",
    }  # fmt: skip
    blank = StageTimes()
    faces = detect_faces(np.zeros((240, 320, 3), np.uint8), pnet, rnet, onet, times=blank)
    assert len(faces) == 0
    assert "onet" not in blank.seconds


def test_tiny_frames_and_thresholds_of_one_give_no_faces(nets):
    assert pyramid_scales(11, 500, CascadeOptions()) == []
    assert len(detect(np.zeros((11, 500, 3), np.uint8), nets)) == 0
    assert len(detect(data.astronaut(), nets, thresholds=(0.6, 0.7, 1.0))) == 0


def test_pyramid_scales_follow_min_face_size_and_factor():
    scales = pyramid_scales(720, 1280, CascadeOptions())
    assert scales[0] == pytest.approx(12 / 20)
    assert np.allclose(np.diff(np.log(scales)), np.log(0.709))
    assert 720 * scales[-1] >= 12 > 720 * scales[-1] * 0.709
    assert pyramid_scales(720, 1280, CascadeOptions(min_face_size=40))[0] == pytest.approx(0.3)


def test_nms_union_and_min():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # Union: box 1 overlaps box 0 by IoU 81/119 = 0.68; box 3 lies inside box 0 (IoU 0.16).
    assert nms(boxes, scores, 0.5, "union").tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.7, "union").tolist() == [0, 1, 2, 3]
    # Min: box 3 overlaps 100% of its own area.
    assert nms(boxes, scores, 0.7, "min").tolist() == [0, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5, "union").size == 0


def test_square_keeps_the_centre_and_the_longer_side():
    got = square(np.array([[10, 20, 30, 60], [0.4, 0.4, 5.6, 3.4]], np.float32))
    assert got.tolist() == [[0, 20, 40, 60], [0, -1, 5, 4]]


@pytest.mark.parametrize(
    "options",
    [{"min_face_size": 5}, {"scale_factor": 1.0}, {"thresholds": (0.6, 0.7, 1.5)}],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        CascadeOptions(**options)
