"""The frame path's pixel work: decode, scale, swap red and blue, pad, warp a quadrilateral.

OpenCV does it where an extra installed it (`[ocr]`, `[camera]`, `[dev]`); the device install
has no OpenCV (173 MB on disk, 15 MB of RSS once imported), so Pillow and numpy do it there.
OpenCV is imported by the first frame that needs pixel work (`opencv()`), not with the server:
a server that is sent tensors only never carries it.
Both decode a JPEG headed for a small model input at 1/2, 1/4 or 1/8 scale (libjpeg-turbo's
DCT scaling: `IMREAD_REDUCED_*` in OpenCV, `Image.draft` in Pillow). OpenCV resizes faster:
a 640x480 JPEG to 224x224 costs 0.95 ms of CPU with it and 1.75 ms with Pillow, decoded
images differ by about one grey level on average (docs/benchmarks.md, "Footprint"). One
contract, two implementations, like `nms_cv2` and `nms_numpy`.

OpenCV and Pillow release the GIL, so frames of many streams still preprocess in parallel.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import threading
from typing import Any

import numpy as np
from PIL import Image

# OpenCV once `opencv()` looked for it: the module, or None where it is not installed.
cv2: Any = None
_looked_for_opencv = False
_opencv_lock = threading.Lock()


def opencv() -> Any:
    """OpenCV, imported on first use (frames of many streams ask at once: one import), or
    None without it."""
    global cv2, _looked_for_opencv
    if not _looked_for_opencv:
        with _opencv_lock:
            if not _looked_for_opencv:
                if importlib.util.find_spec("cv2") is not None:
                    module = importlib.import_module("cv2")
                    # The server already preprocesses frames of many streams in parallel
                    # threads; OpenCV's own per-call thread pool on top split each 224x224
                    # resize across threads that then wait for each other and for
                    # onnxruntime's: 2.9 ms vs 1.4 ms per resize on a busy 2-core device
                    # (docs/benchmarks.md, "Server CPU per frame").
                    module.setNumThreads(1)
                    cv2 = module
                _looked_for_opencv = True
    return cv2


_REDUCTIONS = (8, 4, 2)


def reduction(size: tuple[int, int], target: tuple[int, int] | None) -> int:
    """The largest JPEG scale-down (8, 4, 2, else 1) that keeps (height, width) `size` at least
    `target`: a 1080p frame headed for 224x224 decodes about 4x faster."""
    if target is None:
        return 1
    height, width = size
    return next((f for f in _REDUCTIONS if height // f >= target[0] and width // f >= target[1]), 1)


def decode(
    data: bytes, jpeg: bool, size: tuple[int, int], target: tuple[int, int] | None
) -> tuple[np.ndarray, str] | None:
    """(HWC uint8 image, "rgb" or "bgr") of a JPEG or PNG, or None when it does not decode.
    A JPEG may decode at a reduced scale (`reduction`); the header was checked already."""
    factor = reduction(size, target) if jpeg else 1
    cv2 = opencv()
    if cv2 is not None:
        flags = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 2: cv2.IMREAD_REDUCED_COLOR_2, 1: cv2.IMREAD_COLOR}  # fmt: skip
        try:
            decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags[factor])
        except cv2.error:
            return None
        return None if decoded is None else (decoded, "bgr")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            if factor > 1:
                height, width = size
                picture.draft("RGB", (width // factor, height // factor))
            rgb = picture if picture.mode == "RGB" else picture.convert("RGB")
            image = np.asarray(rgb)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
        return None
    return image, "rgb"


def scale(
    image: np.ndarray, width: int, height: int, *, linear: bool = False, area: bool = False
) -> np.ndarray:
    """Resize; `linear` always interpolates bilinearly, as PaddleOCR's frame-sized resizes do
    (its models were trained on that), else shrinking by 2x or more averages areas; `area`
    averages areas for any narrower result (MTCNN's pyramid and crops, as it was trained)."""
    if image.shape[1] == width and image.shape[0] == height:
        return np.ascontiguousarray(image)
    # Area averaging avoids aliasing when a 1080p frame shrinks to 224 px; below 2x (a JPEG
    # already decoded at reduced scale) bilinear samples every source pixel anyway and costs
    # a sixth of INTER_AREA's non-integer path (0.23 vs 1.37 ms for 320x240 to 224x224).
    halving = width * 2 <= image.shape[1] or height * 2 <= image.shape[0]
    shrinking = not linear and halving and width < image.shape[1] and height < image.shape[0]
    if area:
        shrinking = width < image.shape[1]
    cv2 = opencv()
    if cv2 is not None:
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        resized: np.ndarray = cv2.resize(
            np.ascontiguousarray(image), (width, height), interpolation=interpolation
        )
        return resized
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), method))


def swap_red_blue(image: np.ndarray) -> np.ndarray:
    cv2 = opencv()
    if cv2 is not None:
        swapped: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return swapped
    return np.ascontiguousarray(image[:, :, ::-1])


def pad_right(image: np.ndarray, width: int) -> np.ndarray:
    """`image` (HWC uint8) with zero columns added on the right up to `width`."""
    extra = width - image.shape[1]
    cv2 = opencv()
    if cv2 is not None:
        padded: np.ndarray = cv2.copyMakeBorder(image, 0, 0, 0, extra, cv2.BORDER_CONSTANT, value=0)
        return padded
    return np.pad(image, ((0, 0), (0, extra), (0, 0)))


def warp_quad(image: np.ndarray, corners: np.ndarray, width: int, height: int) -> np.ndarray:
    """The quadrilateral `corners` (4x2, clockwise from top-left) of `image` straightened to
    `width` x `height`, bicubic, edges replicated (a text line cut out of a frame)."""
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    cv2 = opencv()
    if cv2 is not None:
        matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), target)
        warped: np.ndarray = cv2.warpPerspective(
            image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE,
            flags=cv2.INTER_CUBIC,
        )  # fmt: skip
        return warped
    # Pillow maps each output pixel back to the input: the 8 coefficients of target -> corners.
    rows = []
    for (x, y), (u, v) in zip(target, corners, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coefficients = np.linalg.solve(np.asarray(rows, np.float64), corners.reshape(-1))
    picture = Image.fromarray(np.ascontiguousarray(image)).transform(
        (width, height), Image.Transform.PERSPECTIVE, tuple(coefficients.tolist()),
        Image.Resampling.BICUBIC,
    )  # fmt: skip
    return np.asarray(picture)


def blob(images: list[np.ndarray], scale_by: float, mean: float, swap: bool) -> np.ndarray:
    """uint8 HWC images of one size to an NCHW float32 batch: (pixel - mean) * scale_by, with
    red and blue swapped when `swap`."""
    cv2 = opencv()
    if cv2 is not None:
        out = cv2.dnn.blobFromImages(
            images, scalefactor=scale_by, mean=(mean,) * 3, swapRB=swap, crop=False
        )
        return np.asarray(out, dtype=np.float32)
    batch = np.stack(images)
    if swap:
        batch = batch[..., ::-1]
    planes = batch.transpose(0, 3, 1, 2).astype(np.float32)
    planes -= mean
    planes *= scale_by
    return np.ascontiguousarray(planes)
