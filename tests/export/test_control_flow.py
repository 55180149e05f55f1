"""Data-dependent control flow: tracing is caught by the second-example check, `auto` scripts,
and the scripted model (TorchScript and ONNX) matches eager at several sequence lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from server.manifest import read_manifest, verify_files
from testkit.export import SAMPLES, export_cli, snapshot
from testkit.export_samples.control_flow import GatedRecurrentHead, gated_recurrent_head

FACTORY = f"{SAMPLES}.control_flow:gated_recurrent_head"


def test_trace_is_flagged_unsafe_by_the_second_example(tmp_path: Path) -> None:
    result = export_cli(
        FACTORY, "--example-input", "N,L,4", "--method", "trace", "--repository", tmp_path
    )
    assert result.exit_code == 1
    report = result.report()
    assert report["method"] == "trace"
    assert "UNSAFE" in report["reason"]
    # The divergence is found by running the trace on example 1: other values, other sizes.
    assert report["trace_findings"][0].startswith("example 1 ")
    assert "traced model" in report["trace_findings"][0]
    assert any("tracer warning" in finding for finding in report["trace_findings"])
    assert not any(target["written"] for target in report["targets"])
    assert "verification failed" in result.stderr
    assert snapshot(tmp_path) == {}


def test_auto_scripts_and_the_result_matches_eager_at_many_lengths(tmp_path: Path) -> None:
    result = export_cli(
        FACTORY, "--example-input", "N,L,4", "--name", "gru", "--repository", tmp_path
    )
    assert result.exit_code == 0, result.stderr
    report = result.report()
    assert report["method"] == "script"
    assert report["reason"].startswith("tracing is unsafe: example 1 ")
    assert all(target["verified"] and target["written"] for target in report["targets"])

    onnx_dir, script_dir = tmp_path / "gru" / "1", tmp_path / "gru_torchscript" / "1"
    for version_dir in (onnx_dir, script_dir):
        verify_files(version_dir, read_manifest(version_dir))
    manifest = read_manifest(onnx_dir)
    assert manifest.inputs[0].shape == ["N", "L", 4]
    assert manifest.outputs[0].shape == ["N", 3]
    assert manifest.provenance["export"]["method"] == "script"

    eager = gated_recurrent_head()
    scripted = torch.jit.load(str(script_dir / "model.pt"))
    session = onnxruntime.InferenceSession(
        str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    generator = torch.Generator().manual_seed(99)
    branches = set()
    for length in (1, 2, 4, 9, 16):
        for batch in (1, 3):
            x = torch.randn(batch, length, 4, generator=generator) * 3
            with torch.no_grad():
                expected = eager(x)
                branches.add(_takes_positive_branch(eager, x))
                np.testing.assert_allclose(scripted(x).numpy(), expected.numpy(), atol=1e-6)
            (got,) = session.run(None, {"input": x.numpy()})
            np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-4)
    assert branches == {True, False}, "both sides of the value branch must be checked"


def _takes_positive_branch(model: GatedRecurrentHead, x: torch.Tensor) -> bool:
    state = torch.zeros(x.size(0), model.hidden)
    for step in x.unbind(1):
        state = torch.tanh(model.inp(step) + model.rec(state))
    return bool(state.mean() > 0)


@pytest.mark.parametrize("method", ["trace", "auto"])
def test_force_writes_a_failing_target_and_the_manifest_says_so(
    tmp_path: Path, method: str
) -> None:
    args = [FACTORY, "--example-input", "N,L,4", "--to", "torchscript", "--name", "gru"]
    result = export_cli(*args, "--method", method, "--force", "--repository", tmp_path)
    manifest = read_manifest(tmp_path / "gru" / "1")
    if method == "trace":
        assert result.exit_code == 1
        assert manifest.provenance["export"]["verification"] == "failed"
        assert manifest.provenance["export"]["forced"] is True
        assert "example 1" in manifest.provenance["export"]["failure"]
    else:
        assert result.exit_code == 0
        assert manifest.provenance["export"]["verification"] == "passed"
        assert manifest.provenance["export"]["forced"] is False
