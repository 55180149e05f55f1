"""May a new version replace the one serving? Its signature against the old one's, and a real
photo to smoke-test an image model on (zeros, the warm-up's input, pass models that fail on
every real frame).

Checked by the registry before a hot swap makes a version active, and by `edgefleet model
check` against the previous version on disk.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from server.manifest import ModelManifest, Preprocess, TensorSpec
from server.vision.preprocess import FrameEncoding, decode_frame, to_model_input

# A real photo (a cat, from scikit-image's CC0 data, 160x112 JPEG), shipped with the server.
SMOKE_PHOTO = "smoke_photo.jpg"


def takes_frames(manifest: ModelManifest) -> bool:
    """Camera frames need a preprocess section (or a pipeline, whose first stage has one)."""
    return manifest.preprocess is not None or manifest.pipeline is not None


def _dims_conflict(old: TensorSpec, new: TensorSpec) -> bool:
    if len(old.shape) != len(new.shape):
        return True
    return any(
        isinstance(a, int) and isinstance(b, int) and a > 0 and b > 0 and a != b
        for a, b in zip(old.shape, new.shape, strict=True)
    )


def _spec(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.dtype}{list(spec.shape)}"


def signature_problems(old: ModelManifest, new: ModelManifest, *, camera_streams: int) -> list[str]:
    """Why `new` cannot replace `old` for the clients `old` serves (empty: it can). Inputs must
    be the same tensors (names, dtypes, ranks, fixed sizes), every output of `old` must still
    be there with its dtype, and while `camera_streams` are open the new version must take
    camera frames too."""
    problems: list[str] = []
    if camera_streams and takes_frames(old) and not takes_frames(new):
        problems.append(
            f"{camera_streams} camera stream(s) are open and version {new.version} has no "
            "preprocess section, so it cannot take camera frames"
        )
    if old.pipeline is not None or new.pipeline is not None:
        return problems  # a pipeline's signature is its members'
    old_inputs = {spec.name: spec for spec in old.inputs}
    new_inputs = {spec.name: spec for spec in new.inputs}
    for name, spec in old_inputs.items():
        fresh = new_inputs.get(name)
        if fresh is None:
            problems.append(f"input {_spec(spec)} is gone")
        elif fresh.dtype != spec.dtype or _dims_conflict(spec, fresh):
            problems.append(f"input {_spec(spec)} became {_spec(fresh)}")
    for name in new_inputs.keys() - old_inputs.keys():
        problems.append(f"new input {_spec(new_inputs[name])} that clients do not send")
    new_outputs = {spec.name: spec for spec in new.outputs}
    for spec in old.outputs:
        fresh = new_outputs.get(spec.name)
        if fresh is None:
            problems.append(f"output {_spec(spec)} is gone")
        elif fresh.dtype != spec.dtype:
            problems.append(f"output {_spec(spec)} became {_spec(fresh)}")
    if (
        camera_streams
        and old.preprocess is not None
        and new.preprocess is not None
        and old.preprocess.input != new.preprocess.input
    ):
        problems.append(
            f"camera frames go to input {new.preprocess.input!r}, not {old.preprocess.input!r}"
        )
    return problems


@functools.cache
def _photo() -> tuple[np.ndarray, str]:
    data = resources.files("server.vision").joinpath(SMOKE_PHOTO).read_bytes()
    image, color = decode_frame(data, FrameEncoding.JPEG, 0, 0)
    image.setflags(write=False)
    return image, color


def photo_tensor(spec: Preprocess) -> np.ndarray:
    """The real photo as the model's batch-of-one input, through the camera path's preprocess."""
    image, color = _photo()
    return to_model_input(image, color, spec)
