"""Shared by the face tests: the pretrained MTCNN weights, the built networks, and the `faces`
pipeline's models copied into a repository.

`make models` downloads the facenet-pytorch wheel into `.cache/` and exports the three networks
into `models/`; the tests read both, never the network."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.export.mtcnn import WEIGHT_FILES
from testkit.repositories import BUILT_MODELS, ROOT, copy_model

WEIGHTS_DIR = ROOT / ".cache" / "facenet-pytorch-2.6.0"
MODELS = BUILT_MODELS
NETS = ("pnet", "rnet", "onet")
# The `faces` pipeline and the three networks it runs.
FACES = ("faces", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")


def copy_faces(built: Path, repo: Path) -> None:
    """The `faces` pipeline and its networks, copied from the built repository into `repo`."""
    for name in FACES:
        copy_model(built, name, repo)


def weights_path(net: str) -> Path:
    path = WEIGHTS_DIR / WEIGHT_FILES[net]
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make models` (make test does it)")
    return path


def onnx_path(net: str) -> Path:
    path = MODELS / f"mtcnn_{net}" / "1" / "model.onnx"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make models` (make test does it)")
    return path


class OnnxNet:
    """One exported network in ONNX Runtime on one thread: the cascade's `Network`."""

    def __init__(self, net: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(onnx_path(net)), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        return self._session.run(None, {"input": batch})  # type: ignore[no-any-return]
