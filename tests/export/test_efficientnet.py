"""The default model through the exact CLI path: EfficientNet-Lite0 exported to ONNX and
TorchScript, verified against eager, then served by a real EdgeServer with correct labels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.manifest import read_manifest, verify_files
from server.vision.preprocess import to_model_input
from testkit.edge import server_settings
from testkit.export import export_cli
from testkit.kserve import bytes_elements, infer_request
from testkit.media import EXPECTED_TOP1, photo
from testkit.repositories import BUILT_MODELS, ONNX_MODEL

# Exports EfficientNet-Lite0 with torch (seconds per target): system tests.
pytestmark = pytest.mark.system

NAME = "lite0"
ENTRIES = (NAME, f"{NAME}_torchscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One export, both targets, shared by the tests below (it takes seconds)."""
    repository = tmp_path_factory.mktemp("export") / "repo"
    result = export_cli(
        "edgefleet.export.zoo:efficientnet_lite0",
        "--example-input", "N,3,224,224",
        "--input-name", "input", "--output-name", "logits",
        "--to", "onnx,torchscript", "--name", NAME, "--version", "1",
        "--labels", BUILT_MODELS / ONNX_MODEL / "1" / "labels.txt",
        "--preprocess", "color=rgb,mean=127,std=128,layout=nchw,resize=stretch",
        "--repository", repository,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return repository, result.report()


def test_both_targets_pass_verification(exported: tuple[Path, dict[str, Any]]) -> None:
    repository, report = exported
    assert report["method"] == "trace"
    assert report["trace_findings"] == []
    assert {target["target"] for target in report["targets"]} == {"onnx", "torchscript"}
    for target in report["targets"]:
        assert target["written"] and target["verified"]
        # Three examples: batch 2 (traced), 5 (the specialisation check) and 1.
        assert [example["input_shapes"][0][0] for example in target["examples"]] == [2, 5, 1]
        for example in target["examples"]:
            (logits,) = example["outputs"]
            assert logits["top1_agreement"] == 1.0
            assert logits["max_abs_diff"] < 1e-4


def test_repository_entries_are_complete(exported: tuple[Path, dict[str, Any]]) -> None:
    repository, _ = exported
    reference = read_manifest(BUILT_MODELS / ONNX_MODEL / "1")
    for name, fmt in zip(ENTRIES, ("onnx", "torchscript"), strict=True):
        version_dir = repository / name / "1"
        manifest = read_manifest(version_dir)
        verify_files(version_dir, manifest)
        assert manifest.format == fmt
        assert set(manifest.files) == {manifest.model_file, "labels.txt", "export_report.json"}
        # The same contract `make models` writes for this model.
        assert manifest.inputs == reference.inputs and manifest.outputs == reference.outputs
        assert manifest.preprocess == reference.preprocess
        assert manifest.postprocess == reference.postprocess
        assert manifest.provenance["export"]["verification"] == "passed"
    assert sorted(p.name for p in repository.iterdir()) == sorted(ENTRIES)  # no staging left


@pytest.fixture
async def served(exported: tuple[Path, dict[str, Any]]) -> AsyncIterator[grpc.aio.Channel]:
    repository, _ = exported
    server = EdgeServer(server_settings(repository))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        await server.stop(grace_s=1.0)


@pytest.mark.parametrize("name", ENTRIES)
async def test_server_serves_the_export_with_correct_labels(
    served: grpc.aio.Channel, exported: tuple[Path, dict[str, Any]], name: str
) -> None:
    repository, _ = exported
    spec = read_manifest(repository / name / "1").preprocess
    assert spec is not None
    stub = kserve_grpc.GRPCInferenceServiceStub(served)
    for photo_name, expected in EXPECTED_TOP1.items():
        response = await stub.ModelInfer(
            infer_request(name, to_model_input(photo(photo_name), "rgb", spec), classification=1)
        )
        assert response.model_version == "1"
        (top1,) = bytes_elements(response.raw_output_contents[0])
        label = top1.decode().split(":", 2)[2]
        assert label in expected, f"{name} classified {photo_name} as {label!r}"
