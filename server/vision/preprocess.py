"""Camera frames to model input: decode, colour order, resize or letterbox, normalise, layout.

`server.vision.pixels` does the pixel work (OpenCV where installed, else Pillow and numpy); both
release the GIL, so frames from many streams preprocess in parallel threads off the event loop.
"""

from __future__ import annotations

import io
import math
from enum import Enum

import numpy as np
from PIL.JpegImagePlugin import JpegImageFile

from server.errors import InvalidInput
from server.manifest import Preprocess
from server.vision import pixels
from server.vision.detections import FrameTransform

# Frames beyond 8K are refused before anything is allocated for them (configurable per server).
MAX_PIXELS = 7680 * 4320


class FrameEncoding(Enum):
    RAW_RGB = "raw_rgb"
    RAW_BGR = "raw_bgr"
    JPEG = "jpeg"
    PNG = "png"


_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def declared_size(data: bytes, encoding: FrameEncoding) -> tuple[int, int]:
    """(height, width) a JPEG or PNG declares in its header, read without decoding a pixel.

    A header that cannot be read raises InvalidInput: a frame whose size is unknown is never
    handed to the decoder. JPEG markers are walked by Pillow (which, like libjpeg, skips stray
    bytes between markers); PNG's size is in IHDR, which libpng demands be the first chunk."""
    if encoding is FrameEncoding.PNG:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidInput(
                f"undecodable PNG frame ({len(data)} bytes): it does not start with an IHDR chunk"
            )
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    try:
        with JpegImageFile(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:  # Pillow raises SyntaxError, OSError, struct.error... on bad headers
        raise InvalidInput(
            f"undecodable JPEG frame ({len(data)} bytes): no readable start-of-frame header"
        ) from None
    return height, width


def jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, without decoding; None if absent."""
    try:
        return declared_size(data, FrameEncoding.JPEG)
    except InvalidInput:
        return None


def decode_frame(
    data: bytes,
    encoding: FrameEncoding,
    width: int,
    height: int,
    target: tuple[int, int] | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, str]:
    """Return (HWC uint8 image, its colour order "rgb" or "bgr"). `target` (height, width) is
    the size the image will be resized to; a JPEG may then decode at a reduced scale. A frame
    declaring more than `max_pixels` is refused before it is decoded."""
    if encoding in (FrameEncoding.RAW_RGB, FrameEncoding.RAW_BGR):
        if width <= 0 or height <= 0:
            raise InvalidInput(f"raw frame needs width and height, got {width}x{height}")
        if width * height > max_pixels:
            raise InvalidInput(
                f"raw frame {width}x{height} exceeds the server's limit of {max_pixels} pixels"
            )
        expected = width * height * 3
        if len(data) != expected:
            raise InvalidInput(
                f"raw frame of {width}x{height}x3 needs {expected} bytes, got {len(data)}"
            )
        image = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
        return image, "rgb" if encoding is FrameEncoding.RAW_RGB else "bgr"
    magic = _JPEG_MAGIC if encoding is FrameEncoding.JPEG else _PNG_MAGIC
    kind = encoding.name
    if not data.startswith(magic):
        raise InvalidInput(f"frame is not {kind}: {len(data)} bytes without the {kind} signature")
    size = declared_size(data, encoding)
    if size[0] * size[1] > max_pixels:
        raise InvalidInput(
            f"{kind} frame declares {size[1]}x{size[0]} pixels, over the server's limit of "
            f"{max_pixels}"
        )
    decoded = pixels.decode(data, encoding is FrameEncoding.JPEG, size, target)
    if decoded is None:
        raise InvalidInput(f"undecodable {kind} frame ({len(data)} bytes)")
    return decoded


def to_model_input(image: np.ndarray, color: str, spec: Preprocess) -> np.ndarray:
    """HWC uint8 image to a batch-of-one tensor in the model's layout, dtype and colour."""
    return to_model_input_with_transform(image, color, spec)[0]


def to_model_input_with_transform(
    image: np.ndarray, color: str, spec: Preprocess
) -> tuple[np.ndarray, FrameTransform]:
    """Like `to_model_input`, also returning how model pixels map back to `image` pixels."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput(f"frame has shape {list(image.shape)}, expected height x width x 3")
    resized, transform = _resize(image, spec)
    if color != spec.color:
        # Swapped after resizing, on the model's few pixels: a reversed view of the whole
        # frame would be copied in full before the resize (0.6-2.7 ms for 320x240).
        resized = pixels.swap_red_blue(resized)
    if spec.resize == "fit_height":
        return _normalise(resized, spec, pad_to=max(spec.width, resized.shape[1])), transform
    return _normalise(resized, spec), transform


def crops_to_batch(crops: list[np.ndarray], color: str, spec: Preprocess) -> np.ndarray:
    """Crops (HWC uint8) to one batch tensor. With `fit_height` every crop is scaled to the
    model's height and padded (with 0 after normalisation, as PaddleOCR does) to the widest
    crop of the batch, at least `width` and at most `max_width`; else each is resized as a frame."""
    if spec.resize != "fit_height":
        return np.concatenate([to_model_input(crop, color, spec) for crop in crops])
    ratio = max(crop.shape[1] / max(crop.shape[0], 1) for crop in crops)
    padded = min(spec.max_width, max(spec.width, int(spec.height * ratio)))
    tensors = []
    for crop in crops:
        if color != spec.color:
            crop = crop[:, :, ::-1]
        width = min(padded, math.ceil(spec.height * crop.shape[1] / max(crop.shape[0], 1)))
        resized = pixels.scale(crop, max(width, 1), spec.height, linear=True)
        tensors.append(_normalise(resized, spec, pad_to=padded))
    return np.concatenate(tensors)


def _normalise(resized: np.ndarray, spec: Preprocess, pad_to: int = 0) -> np.ndarray:
    """HWC uint8 to a batch of one in the model's layout and dtype; zero-padded on the right
    to `pad_to` columns when that is wider."""
    if pad_to > resized.shape[1]:
        if spec.dtype == "uint8":
            resized = pixels.pad_right(resized, pad_to)
        else:
            tensor = _normalise(resized, spec)
            axis = 3 if spec.layout == "nchw" else 2
            widths = [(0, 0)] * 4
            widths[axis] = (0, pad_to - resized.shape[1])
            return np.pad(tensor, widths)
    if spec.dtype == "uint8":
        tensor = resized.transpose(2, 0, 1) if spec.layout == "nchw" else resized
        return np.ascontiguousarray(tensor)[None]
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    if spec.layout == "nchw":
        # One contiguous pass per channel plane: ~6x faster than normalising HWC and then
        # transposing, which walks memory with a stride of 3.
        height, width = resized.shape[:2]
        planes = np.empty((1, 3, height, width), dtype=np.float32)
        for channel in range(3):
            plane = planes[0, channel]
            np.subtract(resized[:, :, channel], mean[channel], out=plane, dtype=np.float32)
            plane *= inv_std[channel]
        return planes.astype(np.float16) if spec.dtype == "float16" else planes
    tensor = (resized.astype(np.float32) - mean) * inv_std
    if spec.dtype == "float16":
        tensor = tensor.astype(np.float16)
    return np.ascontiguousarray(tensor)[None]


def limit_side_size(height: int, width: int, spec: Preprocess) -> tuple[int, int]:
    """(height, width) of a frame for a dynamic-size detector, as PaddleOCR's DetResizeForTest:
    the shorter (or longer) side at `limit_side_len`, capped at `max_side_len`, both rounded to
    a multiple of `size_multiple`."""
    side = min(height, width) if spec.limit_type == "min" else max(height, width)
    if spec.limit_type == "min":
        ratio = spec.limit_side_len / side if side < spec.limit_side_len else 1.0
    else:
        ratio = spec.limit_side_len / side if side > spec.limit_side_len else 1.0
    longest = max(height, width) * ratio
    if longest > spec.max_side_len:
        ratio *= spec.max_side_len / longest
    step = spec.size_multiple
    new_height = max(step, round(int(height * ratio) / step) * step)
    new_width = max(step, round(int(width * ratio) / step) * step)
    return new_height, new_width


def _resize(image: np.ndarray, spec: Preprocess) -> tuple[np.ndarray, FrameTransform]:
    height, width = image.shape[:2]
    if spec.resize in ("stretch", "limit_side"):
        new_height, new_width = (
            (spec.height, spec.width)
            if spec.resize == "stretch"
            else limit_side_size(height, width, spec)
        )
        transform = FrameTransform(
            scale_x=new_width / width, scale_y=new_height / height,
            source_width=width, source_height=height,
        )  # fmt: skip
        resized = pixels.scale(image, new_width, new_height, linear=spec.resize == "limit_side")
        return resized, transform
    if spec.resize == "fit_height":
        new_width = min(spec.max_width, max(1, math.ceil(spec.height * width / height)))
        transform = FrameTransform(
            scale_x=new_width / width, scale_y=spec.height / height,
            source_width=width, source_height=height,
        )  # fmt: skip
        return pixels.scale(image, new_width, spec.height, linear=True), transform
    scale = min(spec.width / width, spec.height / height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.full((spec.height, spec.width, 3), spec.pad_value, dtype=np.uint8)
    top, left = (spec.height - new_height) // 2, (spec.width - new_width) // 2
    canvas[top : top + new_height, left : left + new_width] = pixels.scale(
        image, new_width, new_height
    )
    transform = FrameTransform(
        scale_x=new_width / width, scale_y=new_height / height, pad_left=left, pad_top=top,
        source_width=width, source_height=height,
    )  # fmt: skip
    return canvas, transform
