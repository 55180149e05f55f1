"""Dynamic dimensions the model constrains: image sides that must be multiples of 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import torch

from server.manifest import read_manifest
from testkit.export import SAMPLES, export_cli, snapshot
from testkit.export_samples.segmenter import tiny_segmenter

FACTORY = f"{SAMPLES}.segmenter:tiny_segmenter"


def test_unconstrained_sizes_get_a_clear_error_with_the_fix(tmp_path: Path) -> None:
    result = export_cli(FACTORY, "--example-input", "N,3,H,W", "--repository", tmp_path)
    assert result.exit_code == 2
    assert "the model rejects example 0 ([2, 3, 3, 4] float32)" in result.stderr
    assert "give one per example, e.g. H=224/320" in result.stderr
    assert snapshot(tmp_path) == {}


def test_explicit_sizes_export_a_model_dynamic_in_height_and_width(tmp_path: Path) -> None:
    result = export_cli(
        FACTORY, "--example-input", "N,3,H=32/64/16,W=32/48/24", "--name", "seg",
        "--repository", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.report()
    shapes = [example["input_shapes"][0] for example in report["targets"][0]["examples"]]
    assert shapes == [[2, 3, 32, 32], [5, 3, 64, 48], [1, 3, 16, 24]]
    manifest = read_manifest(tmp_path / "seg" / "1")
    # Output sides follow the input sides: named after them, each at its own axis.
    assert manifest.outputs[0].shape == ["N", 2, "H", "W"]

    session = onnxruntime.InferenceSession(
        str(tmp_path / "seg" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    image = torch.randn(3, 3, 96, 40)  # a size none of the examples had
    with torch.no_grad():
        expected = tiny_segmenter()(image).numpy()
    (got,) = session.run(None, {"input": image.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
