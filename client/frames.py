"""Frames as the client sees them: captured pixels, then encoded bytes ready for the wire."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

DEFAULT_JPEG_QUALITY = 85


class Encoding(StrEnum):
    # JPEG costs client CPU and saves bandwidth (~20x at quality 85); raw costs no CPU.
    JPEG = "jpeg"
    RAW = "raw"


@dataclass(frozen=True)
class CapturedFrame:
    """One frame from a source: OpenCV's native BGR uint8 pixels (H x W x 3)."""

    pixels_bgr: np.ndarray
    capture_time_unix_ns: int
    # Where the frame came from inside its source (an image folder's file name), for results.
    origin: str = ""


@dataclass(frozen=True)
class EncodedFrame:
    """A frame ready to send; `raw` frames travel as FRAME_ENCODING_RAW_BGR with their size."""

    encoding: Encoding
    data: bytes
    width: int
    height: int
    capture_time_unix_ns: int


class EncodeError(ValueError):
    """A frame the encoder cannot take (wrong shape or dtype)."""


def encode_frame(
    frame: CapturedFrame, encoding: Encoding, jpeg_quality: int = DEFAULT_JPEG_QUALITY
) -> EncodedFrame:
    """Encode pixels for the wire. Blocking (JPEG takes milliseconds): call it off the loop."""
    pixels = frame.pixels_bgr
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise EncodeError(f"expected uint8 HxWx3 BGR pixels, got {pixels.dtype} {pixels.shape}")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if encoding is Encoding.RAW:
        data = np.ascontiguousarray(pixels).tobytes()
    else:
        ok, buffer = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise EncodeError(f"OpenCV could not JPEG-encode a {width}x{height} frame")
        data = buffer.tobytes()
    return EncodedFrame(encoding, data, width, height, frame.capture_time_unix_ns)
