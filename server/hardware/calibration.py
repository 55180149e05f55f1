"""Inputs for quantization calibration and the accuracy guard: real frames, not noise.

Models with a preprocess section get real photographs (a directory of sample frames, else the
images bundled with scikit-image) plus crops and flips of them, preprocessed by the server's own
`to_model_input`, exactly as frames are when served. Models without one get seeded Gaussian
inputs, and the reasons say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.manifest import ModelManifest
from server.preprocess import to_model_input

Sample = dict[str, np.ndarray]
# scikit-image's bundled photographs (no download needed); grayscale ones become RGB.
SAMPLE_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SYNTHETIC_SEED = 20240601


@dataclass(frozen=True)
class CalibrationSet:
    samples: list[Sample]  # each a batch of one
    source: str  # for the plan's reasons


def calibration_set(
    manifest: ModelManifest, calibration_dir: Path | None, views_per_image: int = 3
) -> CalibrationSet:
    if manifest.preprocess is None:
        return _synthetic(manifest, count=16)
    images, source = _load_images(calibration_dir)
    if not images:
        return _synthetic(manifest, count=16)
    samples = [
        {manifest.preprocess.input: to_model_input(view, "rgb", manifest.preprocess)}
        for image in images
        for view in list(_views(image))[:views_per_image]
    ]
    return CalibrationSet(samples=samples, source=f"{len(samples)} views of {source}")


def _load_images(calibration_dir: Path | None) -> tuple[list[np.ndarray], str]:
    import cv2

    if calibration_dir is not None:
        paths = sorted(p for p in calibration_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images = [image for image in (cv2.imread(str(p)) for p in paths) if image is not None]
        rgb = [cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images]
        return rgb, f"{len(rgb)} frames from {calibration_dir}"
    try:
        from skimage import data
    except ImportError:
        return [], "no sample images (scikit-image missing)"
    images = []
    for name in SAMPLE_IMAGES:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        images.append(np.ascontiguousarray(image[..., :3]))
    return images, f"{len(images)} scikit-image photographs"


def _views(image: np.ndarray) -> Iterator[np.ndarray]:
    """The whole image, a centre crop and a flipped corner crop: what a camera might frame."""
    height, width = image.shape[:2]
    yield image
    top, left = int(height * 0.15), int(width * 0.15)
    yield image[top : height - top, left : width - left]
    yield np.ascontiguousarray(image[: int(height * 0.8), int(width * 0.2) :, :][:, ::-1])


def _synthetic(manifest: ModelManifest, count: int) -> CalibrationSet:
    rng = np.random.default_rng(SYNTHETIC_SEED)
    samples = []
    for _ in range(count):
        sample: Sample = {}
        for spec in manifest.inputs:
            dims = [dim if dim > 0 else 1 for dim in spec.fixed_dims()]
            values = rng.standard_normal(dims)
            sample[spec.name] = values.astype(spec.dtype)
        samples.append(sample)
    return CalibrationSet(samples=samples, source=f"{count} seeded Gaussian inputs")
