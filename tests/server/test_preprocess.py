"""Frame preprocessing without a network: reduced-scale JPEG decoding keeps the answer."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort

from server.manifest import read_manifest
from server.preprocess import FrameEncoding, decode_frame, jpeg_dimensions, to_model_input
from tests.conftest import BUILT_MODELS, ONNX_MODEL, jpeg_bytes, photo


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
