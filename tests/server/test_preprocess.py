"""Frame preprocessing without a network: reduced-scale JPEG decoding keeps the answer."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort

from server.manifest import read_manifest
from server.vision.preprocess import FrameEncoding, decode_frame, jpeg_dimensions, to_model_input
from testkit.media import jpeg_bytes, photo
from testkit.repositories import BUILT_MODELS, ONNX_MODEL


def test_jpeg_dimensions_are_read_from_the_header():
    image = cv2.resize(photo("astronaut"), (1920, 1080))
    assert jpeg_dimensions(jpeg_bytes(image)) == (1080, 1920)
    assert jpeg_dimensions(b"\xff\xd8\xff\xe0\x00") is None


def test_reduced_decode_of_a_1080p_frame_keeps_the_classification():
    spec = read_manifest(BUILT_MODELS / ONNX_MODEL / "1").preprocess
    assert spec is not None
    session = ort.InferenceSession(str(BUILT_MODELS / ONNX_MODEL / "1" / "model.onnx"))
    for name in ("chelsea", "coffee"):
        frame = jpeg_bytes(cv2.resize(photo(name), (1920, 1080), interpolation=cv2.INTER_CUBIC))
        reduced, color = decode_frame(frame, FrameEncoding.JPEG, 0, 0, target=(224, 224))
        full, _ = decode_frame(frame, FrameEncoding.JPEG, 0, 0)
        assert reduced.shape == (270, 480, 3) and full.shape == (1080, 1920, 3)
        scores = [
            session.run(None, {"input": to_model_input(image, color, spec)})[0][0]
            for image in (reduced, full)
        ]
        assert int(np.argmax(scores[0])) == int(np.argmax(scores[1]))
        np.testing.assert_allclose(scores[0], scores[1], atol=0.5)


def test_layouts_dtypes_and_letterbox_match_the_plain_formula():
    from server.manifest import Preprocess

    image = photo("astronaut")  # 512x512 RGB
    mean, std = (120.0, 110.0, 100.0), (50.0, 60.0, 70.0)
    expected = (cv2.resize(image, (96, 64), interpolation=cv2.INTER_AREA) - mean) / std
    for layout, dtype in (("nchw", "float32"), ("nhwc", "float32"), ("nchw", "float16")):
        spec = Preprocess(
            input="x", height=64, width=96, mean=mean, std=std, layout=layout, dtype=dtype
        )
        tensor = to_model_input(image, "rgb", spec)
        hwc = tensor[0].transpose(1, 2, 0) if layout == "nchw" else tensor[0]
        assert tensor.dtype == np.dtype(dtype) and tensor.flags.c_contiguous
        np.testing.assert_allclose(hwc, expected, atol=2e-3 if dtype == "float16" else 1e-5)
    # BGR input is flipped into the model's RGB order.
    bgr = to_model_input(np.ascontiguousarray(image[:, :, ::-1]), "bgr", spec)
    np.testing.assert_array_equal(bgr, tensor)
    # Letterbox keeps the aspect ratio: a square photo in a 64x96 box gets side bands.
    boxed = Preprocess(input="x", height=64, width=96, resize="letterbox", pad_value=0)
    padded = to_model_input(image, "rgb", boxed)[0]
    assert np.all(padded[:, :, :16] == 0) and np.all(padded[:, :, -16:] == 0)
    assert padded[:, :, 16:80].mean() > 10
