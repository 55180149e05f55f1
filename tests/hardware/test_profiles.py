"""Recorded device profiles -> the plan for EfficientNet-Lite0, with its reasons.

The profiles in tests/fixtures/hardware are fact sets (what the probe reports on each device).
GPU facts are recorded, not probed, because no GPU exists on the test machine. These tests run
the planner's decisions (`draft_plan`): no conversion or measurement, which the devices would
do themselves. The H200 profile was captured live and goes through the real probe first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import PlanRefused
from server.hardware.decide import draft_plan
from server.hardware.facts import HardwareFacts
from server.hardware.footprint import Footprint, measure_footprint
from server.hardware.policy import PlannerSettings
from server.hardware.probe import probe_hardware
from server.manifest import ModelManifest, RuntimePins, read_manifest
from server.models.runtime_plan import RuntimePlan
from testkit.hardware import load_profile, recorded_h200, write_root

CPU = ("CPUExecutionProvider",)
GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.fixture(scope="module")
def lite0(built_models: Path) -> tuple[ModelManifest, Footprint]:
    version_dir = built_models / "efficientnet_lite0" / "1"
    manifest = read_manifest(version_dir)
    return manifest, measure_footprint(version_dir / manifest.model_file, manifest)


def plan_for(
    lite0: tuple[ModelManifest, Footprint],
    facts: HardwareFacts,
    manifest: ModelManifest | None = None,
    **settings: object,
) -> RuntimePlan:
    base, footprint = lite0
    return draft_plan(
        manifest or base,
        facts,
        PlannerSettings(**settings),  # type: ignore[arg-type]
        lambda _file: footprint,
    )


# profile -> (providers, precision, intra threads, batch, delay us, instances, reason fragments)
EXPECTED = {
    "raspberry_pi4": (
        CPU, "fp32", 4, 4, 2000, 1,
        {"precision": "no int8 dot-product instructions", "providers": "no GPU here",
         "max_batch_size": "caps the manifest's 8 at one per core",
         "intra_op_threads": "4 physical cores", "memory": "free memory"},
    ),
    "jetson_orin_nano": (
        GPU, "fp16", 2, 8, 2000, 1,
        {"precision": "compute capability 8.7", "providers": "Jetson Orin Nano",
         "memory": "free shared CPU/GPU memory", "intra_op_threads": "the GPU does the work"},
    ),
    "x86_server_avx512_vnni": (
        CPU, "int8", 16, 8, 2000, 1,
        {"precision": "avx512_vnni", "intra_op_threads": "hyperthreads skipped",
         "max_batch_size": "balanced policy keeps the manifest's batching"},
    ),
    "laptop_rtx_8gb": (
        GPU, "fp16", 2, 8, 2000, 1,
        {"precision": "RTX 4070 Laptop GPU (compute capability 8.9)",
         "memory": "free on NVIDIA GeForce RTX 4070 Laptop GPU"},
    ),
    "container_2cpu_1gb": (
        CPU, "fp32", 2, 2, 2000, 1,
        {"intra_op_threads": "cgroup quota 2 CPUs", "memory": "cgroup limit 1024.0 MiB",
         "precision": "no int8 dot-product instructions"},
    ),
    "this_machine": (
        CPU, "int8", 2, 2, 2000, 1,
        {"precision": "avx512_vnni", "backend": "onnx: model.onnx"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_profile_plan_and_reasons(lite0: tuple[ModelManifest, Footprint], profile: str) -> None:
    providers, precision, threads, batch, delay, instances, reasons = EXPECTED[profile]
    plan = plan_for(lite0, load_profile(profile))
    assert plan.backend == "onnx"
    assert plan.providers == providers
    assert plan.precision == precision
    assert plan.intra_op_threads == threads
    assert (plan.max_batch_size, plan.max_queue_delay_us) == (batch, delay)
    assert plan.instance_count == instances
    assert plan.pinned == frozenset()
    for key, fragment in reasons.items():
        assert fragment in plan.reasons[key], (key, plan.reasons[key])
    # Every decision says why, in one line.
    for key in ("backend", "providers", "precision", "intra_op_threads", "max_batch_size",
                "max_queue_delay_us", "instance_count", "memory"):  # fmt: skip
        assert plan.reasons[key] and "\n" not in plan.reasons[key]


def test_recorded_h200_without_onnxruntime_gpu_stays_on_the_cpu(
    tmp_path: Path, lite0: tuple[ModelManifest, Footprint]
) -> None:
    # That machine had the CPU build of onnxruntime: a GPU it cannot use must not be planned.
    capture, nvml = recorded_h200()
    facts = probe_hardware(
        write_root(tmp_path, capture["files"]),
        nvml=nvml,
        machine="x86_64",
        affinity=lambda: capture["env"]["affinity"],
        onnx_providers=lambda: capture["env"]["ort_providers"],
    )
    plan = plan_for(lite0, facts)
    assert plan.providers == CPU
    assert "NVIDIA H200 found, but this onnxruntime has no CUDA" in plan.reasons["providers"]
    assert plan.precision == "int8" and "amx_int8" in plan.reasons["precision"]
    assert plan.intra_op_threads == 16


def test_throughput_policy_on_the_server_runs_two_instances(
    lite0: tuple[ModelManifest, Footprint],
) -> None:
    plan = plan_for(lite0, load_profile("x86_server_avx512_vnni"), policy="throughput")
    assert (plan.instance_count, plan.intra_op_threads) == (2, 8)
    assert (plan.max_batch_size, plan.max_queue_delay_us) == (16, 5000)
    assert "split over 2 instances" in plan.reasons["intra_op_threads"]


def test_throughput_policy_on_two_cores_runs_one_single_threaded_instance_per_core(
    lite0: tuple[ModelManifest, Footprint],
) -> None:
    plan = plan_for(lite0, load_profile("container_2cpu_1gb"), policy="throughput")
    assert (plan.instance_count, plan.intra_op_threads) == (2, 1)
    assert "split over 2 instances" in plan.reasons["intra_op_threads"]
    # The balanced default keeps one session on both cores (lower latency for one camera).
    balanced = plan_for(lite0, load_profile("container_2cpu_1gb"))
    assert (balanced.instance_count, balanced.intra_op_threads) == (1, 2)


def test_latency_policy_and_budget(lite0: tuple[ModelManifest, Footprint]) -> None:
    laptop = load_profile("laptop_rtx_8gb")
    latency = plan_for(lite0, laptop, policy="latency")
    assert (latency.max_batch_size, latency.max_queue_delay_us) == (1, 0)
    budgeted = plan_for(lite0, laptop, policy="balanced", latency_budget_ms=4)
    assert budgeted.max_queue_delay_us == 1000
    assert "quarter of the 4 ms latency budget" in budgeted.reasons["max_queue_delay_us"]


def test_memory_shrinks_the_batch_then_refuses_with_numbers(
    lite0: tuple[ModelManifest, Footprint],
) -> None:
    _, footprint = lite0
    server = load_profile("x86_server_avx512_vnni")  # batch 8, int8 candidate
    one = footprint.needed("int8", 1, 1) / (1 << 20)
    eight = footprint.needed("int8", 8, 1) / (1 << 20)
    budget = (one + eight) / 2  # fits a smaller batch, not 8
    shrunk = plan_for(lite0, server, memory_budget_mb=budget)
    assert 1 <= shrunk.max_batch_size < 8
    assert footprint.needed("int8", shrunk.max_batch_size, 1) <= budget * (1 << 20)
    assert "reduced from 8" in shrunk.reasons["max_batch_size"]
    assert f"within {budget:.1f} MiB (the {budget:g} MiB memory budget)" in shrunk.reasons["memory"]
    with pytest.raises(PlanRefused) as refused:
        plan_for(lite0, server, memory_budget_mb=one * 0.9)
    message = str(refused.value)
    assert f"needs {one:.1f} MiB" in message
    assert f"only {one * 0.9:.1f} MiB may be used" in message
    assert "weights 4.4 MiB int8" in message


def test_a_pinned_choice_overrides_the_plan(lite0: tuple[ModelManifest, Footprint]) -> None:
    manifest, _ = lite0
    pinned_manifest = manifest.model_copy(
        update={"runtime": RuntimePins(precision="fp32", intra_op_threads=5, max_batch_size=4)}
    )
    server = load_profile("x86_server_avx512_vnni")
    plan = plan_for(lite0, server, manifest=pinned_manifest, pins=RuntimePins(intra_op_threads=3))
    assert plan.precision == "fp32" and plan.reasons["precision"] == "fp32: pinned in the manifest"
    assert plan.intra_op_threads == 3
    assert plan.reasons["intra_op_threads"] == "3: pinned on the command line"
    assert plan.max_batch_size == 4
    assert plan.pinned == {"precision", "intra_op_threads", "max_batch_size"}
    # A pinned batch that cannot fit is refused, not silently shrunk.
    with pytest.raises(PlanRefused, match="pinned batch 4"):
        plan_for(lite0, server, manifest=pinned_manifest, memory_budget_mb=30)


def test_torchscript_needs_torch(built_models: Path) -> None:
    version_dir = built_models / "efficientnet_lite0_torchscript" / "1"
    manifest = read_manifest(version_dir)
    footprint = measure_footprint(version_dir / manifest.model_file, manifest)
    jetson = draft_plan(
        manifest, load_profile("jetson_orin_nano"), PlannerSettings(), lambda _f: footprint
    )
    assert (jetson.backend, jetson.providers, jetson.precision) == ("torchscript", ("cpu",), "fp32")
    with pytest.raises(PlanRefused, match="no torch"):
        draft_plan(manifest, load_profile("raspberry_pi4"), PlannerSettings(), lambda _f: footprint)
