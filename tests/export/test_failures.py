"""Bad input and failure: a clear message each time, and the repository is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.manifest import read_manifest, verify_files
from testkit.export import SAMPLES, export_cli, snapshot
from testkit.export_samples.control_flow import TwoLayerHead
from testkit.repositories import ROOT

CONTROL_FLOW = f"{SAMPLES}.control_flow:gated_recurrent_head"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository that already holds a model, so 'unchanged' means something."""
    repo = tmp_path / "repo"
    result = export_cli(
        CONTROL_FLOW, "--example-input", "N,L,4", "--to", "torchscript", "--name", "gru",
        "--repository", repo,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return repo


def test_unsupported_onnx_operator_is_named_and_torchscript_is_still_written(
    tmp_path: Path,
) -> None:
    result = export_cli(
        f"{SAMPLES}.unsupported_onnx:spectral_head", "--example-input", "N,16",
        "--name", "spectral", "--repository", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "operator aten::fft_rfft cannot be exported to ONNX (opset 17)" in result.stderr
    outcomes = {target["target"]: target for target in result.report()["targets"]}
    assert not outcomes["onnx"]["written"]
    assert outcomes["torchscript"]["written"] and outcomes["torchscript"]["verified"]
    assert not (tmp_path / "spectral").exists()
    version_dir = tmp_path / "spectral_torchscript" / "1"
    verify_files(version_dir, read_manifest(version_dir))
    scripted = torch.jit.load(str(version_dir / "model.pt"))
    assert scripted(torch.randn(4, 16)).shape == (4, 2)


def test_mismatched_weights_name_the_first_keys(repository: Path, tmp_path: Path) -> None:
    before = snapshot(repository)
    weights = tmp_path / "other.pt"
    torch.save(TwoLayerHead().state_dict(), weights)
    result = export_cli(
        CONTROL_FLOW, "--weights", weights, "--example-input", "N,L,4", "--name", "gru2",
        "--repository", repository,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "weights other.pt do not match GatedRecurrentHead" in result.stderr
    assert "missing keys: rec.weight, rec.bias, head.weight, head.bias" in result.stderr
    assert "unexpected keys: out.weight, out.bias" in result.stderr
    assert "shape mismatch: inp.weight (file [16, 4], model [8, 4])" in result.stderr
    assert result.report()["kind"] == "WeightsMismatch"
    assert snapshot(repository) == before


def test_matching_weights_are_loaded(repository: Path, tmp_path: Path) -> None:
    from testkit.export_samples.control_flow import GatedRecurrentHead

    trained = GatedRecurrentHead()
    with torch.no_grad():
        trained.head.bias.fill_(5.0)
    weights = tmp_path / "trained.pt"
    torch.save({"state_dict": trained.state_dict()}, weights)
    result = export_cli(
        CONTROL_FLOW, "--weights", weights, "--example-input", "N,L,4", "--to", "torchscript",
        "--name", "trained", "--repository", repository,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    scripted = torch.jit.load(str(repository / "trained" / "1" / "model.pt"))
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(scripted(x), trained.eval()(x))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_package.models:build", "module 'no_such_package.models' does not import: "
         "ModuleNotFoundError: No module named 'no_such_package'"),
        (f"{SAMPLES}.control_flow:no_such_factory",
         f"module '{SAMPLES}.control_flow' has no attribute 'no_such_factory'"),
        (f"{SAMPLES}.control_flow", "expected MODULE:FACTORY"),
        (f"{SAMPLES}.control_flow:broken_factory",
         "raised ValueError: checkpoint config 'hidden_size' missing"),
        (f"{SAMPLES}.control_flow:FEATURES", "is a int, not a callable"),
    ],
)  # fmt: skip
def test_bad_module_path_or_factory(repository: Path, factory: str, message: str) -> None:
    before = snapshot(repository)
    result = export_cli(factory, "--example-input", "N,L,4", "--repository", repository)
    assert result.exit_code == 2
    assert message in result.stderr
    assert snapshot(repository) == before


def test_example_shape_the_model_rejects(repository: Path) -> None:
    before = snapshot(repository)
    result = export_cli(
        CONTROL_FLOW, "--example-input", "N,L,5", "--name", "new", "--repository", repository
    )
    assert result.exit_code == 2
    assert "the model rejects example 0 ([2, 3, 5] float32): RuntimeError:" in result.stderr
    assert "cannot be multiplied" in result.stderr
    assert snapshot(repository) == before


def test_existing_version_is_refused_unless_overwrite(repository: Path) -> None:
    before = snapshot(repository)
    args = [CONTROL_FLOW, "--example-input", "N,L,4", "--to", "torchscript", "--name", "gru"]
    result = export_cli(*args, "--version", "1", "--repository", repository)
    assert result.exit_code == 2
    assert "gru/1 already exist" in result.stderr and "--overwrite" in result.stderr
    assert snapshot(repository) == before

    replaced = export_cli(*args, "--version", "1", "--overwrite", "--repository", repository)
    assert replaced.exit_code == 0, replaced.stderr
    after = snapshot(repository)
    assert after.keys() == before.keys()  # same files, nothing left from staging
    # Without --version the next free one is taken.
    assert export_cli(*args, "--repository", repository).exit_code == 0
    assert (repository / "gru" / "2" / "manifest.json").is_file()


@pytest.mark.parametrize("method", ["auto", "script"])
def test_script_error_names_the_construct_and_line(repository: Path, method: str) -> None:
    before = snapshot(repository)
    result = export_cli(
        f"{SAMPLES}.unscriptable:length_dependent_pool", "--example-input", "N,L",
        "--method", method, "--repository", repository,
    )  # fmt: skip
    assert result.exit_code == 2
    if method == "auto":  # auto says why it tried scripting at all
        assert "tracing is unsafe (example 1 " in result.stderr
    assert "cannot script LengthDependentPool: try blocks aren't supported at " in result.stderr
    assert "unscriptable.py:14: `try:`" in result.stderr
    assert snapshot(repository) == before


def test_labels_that_do_not_fit_the_classifier(repository: Path, tmp_path: Path) -> None:
    before = snapshot(repository)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n", encoding="utf-8")
    result = export_cli(
        CONTROL_FLOW, "--example-input", "N,L,4", "--labels", labels, "--name", "cls",
        "--repository", repository,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "has 2 labels but output output has 3 classes" in result.stderr
    assert snapshot(repository) == before


def test_a_new_repository_is_not_left_behind_on_failure(tmp_path: Path) -> None:
    repository = tmp_path / "fresh"
    result = export_cli(
        f"{SAMPLES}.unscriptable:length_dependent_pool", "--example-input", "N,L",
        "--method", "trace", "--repository", repository,
    )  # fmt: skip
    assert result.exit_code == 1
    assert not repository.exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--name", ".hidden", "model name '.hidden'"),
        ("--version", "v2", "version 'v2' must be a positive integer"),
    ],
)
def test_names_the_server_cannot_serve_are_refused(
    repository: Path, flag: str, value: str, message: str
) -> None:
    before = snapshot(repository)
    result = export_cli(
        CONTROL_FLOW, "--example-input", "N,L,4", flag, value, "--repository", repository
    )
    assert result.exit_code == 2
    assert message in result.stderr
    assert snapshot(repository) == before


def test_factory_from_a_python_file(tmp_path: Path) -> None:
    """A researcher's file need not be an installed package."""
    source = ROOT / "testkit" / "export_samples" / "control_flow.py"
    result = export_cli(
        f"{source}:gated_recurrent_head", "--example-input", "N,L,4", "--to", "torchscript",
        "--repository", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.report()["method"] == "script"
    assert (tmp_path / "gated_recurrent_head" / "1" / "model.pt").is_file()
