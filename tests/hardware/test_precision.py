"""int8 through the accuracy guard: EfficientNet-Lite0, a model quantization breaks, one it keeps.

The planner runs for real here: static QDQ quantization with onnxruntime, calibrated on
scikit-image photographs, compared with fp32 on those inputs. The facts are this machine's
recorded profile (an AVX-512 VNNI CPU), so the int8 path is taken whatever CPU runs the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from protos.edgefleet.v1 import server_info_pb2, server_info_pb2_grpc
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.backends.base import load_backend
from server.errors import PlanRefused
from server.hardware.planner import HardwarePlanner
from server.hardware.policy import PlannerSettings
from server.manifest import RuntimePins, read_manifest
from server.preprocess import to_model_input
from tests.conftest import copy_model, photo, server_settings
from tests.hardware.test_profiles import load_profile
from tests.hardware.tiny_models import write_classifier
from tests.server.kserve_helpers import infer_request, output_array


@pytest.fixture(scope="session")
def lite0_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One conversion cache for the session: entries are keyed by the model's sha256."""
    return tmp_path_factory.mktemp("edgefleet-cache")


def vnni_planner(**settings: object) -> HardwarePlanner:
    return HardwarePlanner(
        PlannerSettings(**settings),  # type: ignore[arg-type]
        facts=load_profile("this_machine"),
    )


def verdicts(cache_dir: Path) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(cache_dir.glob("*-int8-*.json"))]


def test_int8_guard_judges_efficientnet_lite0_honestly(
    tmp_path: Path, built_models: Path, lite0_cache: Path
) -> None:
    version_dir = copy_model(built_models, "efficientnet_lite0", tmp_path / "repo")
    manifest = read_manifest(version_dir)
    plan = vnni_planner(cache_dir=lite0_cache).plan(version_dir, manifest)

    (verdict,) = verdicts(lite0_cache)
    agreement = float(verdict["value"])  # type: ignore[arg-type]
    print(f"EfficientNet-Lite0 int8 top-1 agreement with fp32: {agreement:.1%}")
    assert verdict["metric"] == "top1_agreement"
    assert int(verdict["samples"]) >= 16  # type: ignore[call-overload]
    assert "scikit-image photographs" in str(verdict["calibration"])
    # A working quantizer, not a broken one: most answers agree.
    assert agreement > 0.5
    if agreement >= 0.99:
        assert plan.precision == "int8"
        assert (version_dir / plan.model_file).is_file() or Path(plan.model_file).is_file()
    else:
        assert plan.precision == "fp32" and plan.model_file == "model.onnx"
        assert f"top-1 agreement with fp32 {agreement:.1%}" in plan.reasons["precision"]
        assert "needs >= 99%" in plan.reasons["precision"]
        assert not list(lite0_cache.glob("*-int8-*.onnx")), "a rejected model must not be kept"


def test_guard_rejects_a_model_that_quantization_breaks(tmp_path: Path) -> None:
    version_dir = write_classifier(tmp_path / "repo", "breaker", outlier=1e4)
    manifest = read_manifest(version_dir)
    plan = vnni_planner().plan(version_dir, manifest)
    assert plan.precision == "fp32" and plan.model_file == "model.onnx"
    assert "int8 failed the accuracy guard" in plan.reasons["precision"]
    cache = version_dir / ".edgefleet-cache"
    (verdict,) = verdicts(cache)
    assert float(verdict["value"]) < 0.5  # type: ignore[arg-type]
    assert not list(cache.glob("*.onnx"))

    # Pinning int8 does not get a failed model served: the load is refused instead.
    pinned = vnni_planner(pins=RuntimePins(precision="int8"))
    with pytest.raises(PlanRefused, match="precision int8 is pinned .* never served"):
        pinned.plan(version_dir, manifest)


def test_accepted_int8_is_cached_beside_the_model_and_served(tmp_path: Path) -> None:
    version_dir = write_classifier(tmp_path / "repo", "tiny", outlier=None)
    manifest = read_manifest(version_dir)
    plan = vnni_planner().plan(version_dir, manifest)
    assert plan.precision == "int8"
    assert "accuracy guard passed: top-1 agreement with fp32 100.0%" in plan.reasons["precision"]
    sha = manifest.files["model.onnx"]
    assert plan.model_file.startswith(f".edgefleet-cache/{sha[:16]}-int8-")
    converted = version_dir / plan.model_file
    written = converted.stat().st_mtime_ns

    # The converted file really runs and agrees with fp32 on a photo it was not calibrated on.
    backend = load_backend(version_dir, manifest, plan)
    assert manifest.preprocess is not None
    frame = to_model_input(photo("rocket"), "rgb", manifest.preprocess)
    int8_logits = backend.run({"input": frame}, ["logits"])["logits"]
    fp32 = ort.InferenceSession(str(version_dir / "model.onnx"))
    assert int(np.argmax(int8_logits)) == int(np.argmax(fp32.run(["logits"], {"input": frame})[0]))
    backend.close()

    # A restart plans from the cache: same file, not converted again.
    again = vnni_planner().plan(version_dir, manifest)
    assert again.model_file == plan.model_file
    assert converted.stat().st_mtime_ns == written


async def test_plan_and_facts_are_readable_over_grpc(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    write_classifier(repository, "tiny", outlier=None)
    planner = vnni_planner()
    server = EdgeServer(
        server_settings(repository), planner=planner, device_facts=lambda: planner.facts().to_dict()
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            kserve_stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            config = (await kserve_stub.ModelConfig(kserve.ModelConfigRequest(name="tiny"))).config
            served_plan = json.loads(config.parameters["edgefleet.plan"].string_value)
            assert served_plan["precision"] == "int8"
            assert "accuracy guard passed" in served_plan["reasons"]["precision"]
            assert served_plan["model_file"].startswith(".edgefleet-cache/")

            spec = read_manifest(repository / "tiny" / "1").preprocess
            assert spec is not None
            frame = to_model_input(photo("chelsea"), "rgb", spec)
            response = await kserve_stub.ModelInfer(infer_request("tiny", frame))
            assert output_array(response).shape == (1, 5)

            info_stub = server_info_pb2_grpc.ServerInfoServiceStub(channel)
            reply = await info_stub.GetDeviceFacts(server_info_pb2.GetDeviceFactsRequest())
            facts = json.loads(reply.facts_json)
            assert facts["fingerprint"] == planner.facts().fingerprint
            assert "avx512_vnni" in facts["cpu"]["features"]
    finally:
        await server.stop(grace_s=1.0)


def test_fp16_for_a_fast_fp16_gpu_passes_the_guard(tmp_path: Path, built_models: Path) -> None:
    # The laptop profile's RTX GPU is recorded (no GPU here): the planner converts to fp16 and,
    # with no CUDA provider in this onnxruntime, the guard compares on the CPU provider and
    # says so.
    version_dir = copy_model(built_models, "efficientnet_lite0", tmp_path / "repo")
    manifest = read_manifest(version_dir)
    planner = HardwarePlanner(PlannerSettings(), facts=load_profile("laptop_rtx_8gb"))
    plan = planner.plan(version_dir, manifest)
    assert plan.precision == "fp16"
    assert plan.providers[0] == "TensorrtExecutionProvider"
    assert "accuracy guard passed: top-1 agreement with fp32" in plan.reasons["precision"]
    assert "CPUExecutionProvider" in plan.reasons["precision"]
    converted = version_dir / plan.model_file
    assert converted.is_file() and converted.name.startswith(manifest.files["model.onnx"][:16])
    # Inputs and outputs stay fp32, so clients and preprocessing do not change.
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    assert "weights 8.8 MiB fp16" in plan.reasons["memory"]


def test_raw_outputs_are_judged_by_relative_error(tmp_path: Path) -> None:
    version_dir = write_classifier(tmp_path / "repo", "features", outlier=None, raw=True)
    plan = vnni_planner().plan(version_dir, read_manifest(version_dir))
    assert plan.precision == "int8"
    assert "relative error vs fp32" in plan.reasons["precision"]
    assert "seeded Gaussian inputs" in plan.reasons["precision"]
    assert "needs <= 0.05" in plan.reasons["precision"]


def test_a_conversion_that_fails_falls_back_to_fp32(tmp_path: Path) -> None:
    version_dir = write_classifier(tmp_path / "repo", "tiny", outlier=None)
    manifest = read_manifest(version_dir)
    missing = tmp_path / "no-such-frames"
    plan = vnni_planner(calibration_dir=missing).plan(version_dir, manifest)
    assert plan.precision == "fp32" and plan.model_file == "model.onnx"
    assert plan.reasons["precision"] == "fp32: int8 conversion failed (FileNotFoundError)"
    with pytest.raises(PlanRefused, match="precision int8 is pinned but int8 conversion failed"):
        vnni_planner(calibration_dir=missing, pins=RuntimePins(precision="int8")).plan(
            version_dir, manifest
        )
