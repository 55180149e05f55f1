"""Inputs for quantization calibration and for the accuracy guard: real frames, never the same.

Models with a preprocess section get real photographs (frames from `--calibration-dir` when
given, else the photographs bundled with scikit-image) seen the way a camera might: random
crops at several scales and aspect ratios, mirror flips and brightness changes, preprocessed by
the server's own `to_model_input`, exactly as frames are when served.

Calibration and evaluation never share an input: evaluation views are drawn with a different
seed (other crops, flips and brightness of the photographs), and with `--calibration-dir` every
other frame is held out for evaluation only. Models without a preprocess section get seeded
Gaussian inputs (two disjoint seeds), and the reasons say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.manifest import ModelManifest
from server.vision.preprocess import to_model_input

Sample = dict[str, np.ndarray]
# scikit-image's bundled pictures (no download needed); grayscale ones become RGB. Natural
# photographs and the kinds of scenes a camera sees (text, textures, microscopy), not only
# objects a classifier knows: the guard must also judge inputs without a clear answer.
SAMPLE_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "coins",
    "horse",
    "page",
    "moon",
    "text",
    "clock",
    "brick",
    "grass",
    "gravel",
    "colorwheel",
    "logo",
    "stereo_motorcycle",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CALIBRATION_SEED = 20240601
EVALUATION_SEED = 20250917
CALIBRATION_VIEWS = 48
EVALUATION_VIEWS = 160


@dataclass(frozen=True)
class CalibrationSet:
    samples: list[Sample]  # each a batch of one
    source: str  # for the plan's reasons


@dataclass(frozen=True)
class GuardInputs:
    """Disjoint inputs: `calibration` sets the int8 ranges, `evaluation` judges the result."""

    calibration: CalibrationSet
    evaluation: CalibrationSet


def guard_inputs(
    manifest: ModelManifest,
    calibration_dir: Path | None,
    calibration_views: int = CALIBRATION_VIEWS,
    evaluation_views: int = EVALUATION_VIEWS,
) -> GuardInputs:
    if manifest.preprocess is None:
        return GuardInputs(
            _synthetic(manifest, calibration_views // 3, CALIBRATION_SEED),
            _synthetic(manifest, evaluation_views // 3, EVALUATION_SEED),
        )
    preprocess = manifest.preprocess
    images, source = _load_images(calibration_dir)
    if not images:
        return GuardInputs(
            _synthetic(manifest, calibration_views // 3, CALIBRATION_SEED),
            _synthetic(manifest, evaluation_views // 3, EVALUATION_SEED),
        )
    if calibration_dir is not None and len(images) >= 2:
        # Real frames: every other one is held out, so no frame is both calibrated and judged.
        calibrate_on, judge_on = images[0::2], images[1::2]
        split = "held-out frames"
    else:
        calibrate_on = judge_on = images
        split = "other views"

    def model_input(view: np.ndarray) -> Sample:
        return {preprocess.input: to_model_input(view, "rgb", preprocess)}

    calibration = [
        model_input(view)
        for view in camera_views(calibrate_on, calibration_views, CALIBRATION_SEED)
    ]
    evaluation = [
        model_input(view) for view in camera_views(judge_on, evaluation_views, EVALUATION_SEED)
    ]
    return GuardInputs(
        CalibrationSet(calibration, f"{len(calibration)} views of {source}"),
        CalibrationSet(evaluation, f"{len(evaluation)} {split} of {source}"),
    )


def calibration_set(manifest: ModelManifest, calibration_dir: Path | None) -> CalibrationSet:
    """The calibration half of `guard_inputs` (what quantization sees)."""
    return guard_inputs(manifest, calibration_dir).calibration


def constant_calibration(manifest: ModelManifest, count: int = 8) -> CalibrationSet:
    """Flat grey frames: a deliberately wrong calibration (tests and benchmarks show the guard
    rejects what it produces)."""
    preprocess = manifest.preprocess
    if preprocess is None:
        samples = [
            {
                spec.name: np.zeros([d if d > 0 else 1 for d in spec.fixed_dims()], spec.dtype)
                for spec in manifest.inputs
            }
            for _ in range(count)
        ]
    else:
        grey = np.full((preprocess.height, preprocess.width, 3), 128, dtype=np.uint8)
        samples = [
            {preprocess.input: to_model_input(grey, "rgb", preprocess)} for _ in range(count)
        ]
    return CalibrationSet(samples, f"{count} constant frames")


def camera_views(images: list[np.ndarray], count: int, seed: int) -> list[np.ndarray]:
    """`count` views: a crop of 30-100% of the area at aspect 3:4 to 4:3, mirrored half the
    time, brightness x0.6-1.4; the images take turns so each is seen about equally."""
    rng = np.random.default_rng(seed)
    views = []
    for index in range(count):
        image = images[index % len(images)]
        height, width = image.shape[:2]
        area = rng.uniform(0.3, 1.0) * height * width
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        crop_h = int(min(height, max(8, round(np.sqrt(area / aspect)))))
        crop_w = int(min(width, max(8, round(np.sqrt(area * aspect)))))
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        view = image[top : top + crop_h, left : left + crop_w]
        if rng.random() < 0.5:
            view = view[:, ::-1]
        gain = rng.uniform(0.6, 1.4)
        views.append(np.clip(view.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return views


def _load_images(calibration_dir: Path | None) -> tuple[list[np.ndarray], str]:
    if calibration_dir is not None:
        paths = sorted(p for p in calibration_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rgb = [image for image in (_read_rgb(path) for path in paths) if image is not None]
        return rgb, f"{len(rgb)} frames from {calibration_dir.name}"
    try:
        from skimage import data
    except ImportError:
        return [], "no sample images (scikit-image missing)"
    images = []
    for name in SAMPLE_IMAGES:
        loader: Callable[[], object] | None = getattr(data, name, None)
        if loader is None:
            continue
        loaded = loader()
        image = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        images.append(np.ascontiguousarray(image[..., :3].astype(np.uint8)))
    return images, f"{len(images)} scikit-image pictures"


def _read_rgb(path: Path) -> np.ndarray | None:
    """An image file as RGB uint8 (Pillow: the device install has no OpenCV), None if it
    does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))
    except (OSError, ValueError, SyntaxError):
        return None


def _synthetic(manifest: ModelManifest, count: int, seed: int) -> CalibrationSet:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample: Sample = {}
        for spec in manifest.inputs:
            dims = [dim if dim > 0 else 1 for dim in spec.fixed_dims()]
            values = rng.standard_normal(dims)
            sample[spec.name] = values.astype(spec.dtype)
        samples.append(sample)
    return CalibrationSet(samples=samples, source=f"{count} seeded Gaussian inputs")
