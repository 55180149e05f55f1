"""Autotune on the real EfficientNet-Lite0: its time bound, its disk cache, its latency budget."""

from __future__ import annotations

import time
from pathlib import Path

from server.hardware.autotune import Measurement, autotune, pick_best
from server.hardware.planner import HardwarePlanner
from server.hardware.policy import PlannerSettings
from server.manifest import RuntimePins, read_manifest
from testkit.hardware import load_profile
from testkit.repositories import copy_model

# fp32 pinned: these tests are about autotune, not quantization.
FP32 = RuntimePins(precision="fp32")


def planner(cache_dir: Path, **settings: object) -> HardwarePlanner:
    return HardwarePlanner(
        PlannerSettings(autotune=True, cache_dir=cache_dir, **settings),  # type: ignore[arg-type]
        facts=load_profile("this_machine"),
    )


def test_autotune_stops_at_its_time_bound(tmp_path: Path, built_models: Path) -> None:
    version_dir = built_models / "efficientnet_lite0" / "1"
    manifest = read_manifest(version_dir)
    bound_s = 1.5
    started = time.monotonic()
    result = autotune(
        model_path=version_dir / "model.onnx",
        model_sha256=manifest.files["model.onnx"],
        manifest=manifest,
        providers=("CPUExecutionProvider",),
        threads=[1, 2],
        batches=[1, 2, 4, 8],
        fingerprint="test",
        cache_dir=tmp_path / "cache",
        time_budget_s=bound_s,
        queue_delay_ms=2.0,
        latency_budget_ms=None,
    )
    elapsed = time.monotonic() - started
    # Past the bound by at most one session build and one batch run.
    assert elapsed < bound_s + 1.5, elapsed
    assert result.skipped_candidates > 0 and result.measurements
    assert len(result.measurements) + result.skipped_candidates == 8
    # An incomplete table is not cached: the next start measures again.
    assert not list((tmp_path / "cache").glob("autotune-*.json"))


def test_autotune_cache_makes_the_second_load_instant(tmp_path: Path, built_models: Path) -> None:
    version_dir = copy_model(built_models, "efficientnet_lite0", tmp_path / "repo")
    manifest = read_manifest(version_dir)
    cache = tmp_path / "cache"
    # Batch pinned to 2: two candidates (1 and 2 threads) keep the test short.
    pins = RuntimePins(precision="fp32", max_batch_size=2)

    started = time.monotonic()
    first = planner(cache, pins=pins).plan(version_dir, manifest)
    first_s = time.monotonic() - started
    assert "autotune (measured 2 pairs" in first.reasons["autotune"]
    (cache_file,) = cache.glob("autotune-*.json")
    fingerprint = load_profile("this_machine").fingerprint
    assert manifest.files["model.onnx"][:16] in cache_file.name and fingerprint in cache_file.name

    # A restart: a new planner reads the table instead of measuring.
    started = time.monotonic()
    second = planner(cache, pins=pins).plan(version_dir, manifest)
    second_s = time.monotonic() - started
    assert "autotune (cached measurement)" in second.reasons["autotune"]
    assert (second.intra_op_threads, second.max_batch_size) == (
        first.intra_op_threads,
        first.max_batch_size,
    )
    assert second_s < first_s / 2, (first_s, second_s)


def test_best_throughput_within_the_latency_budget() -> None:
    table = [
        Measurement(2, 1, 20, batch_p50_ms=5.0, batch_p95_ms=6.0, throughput_fps=200.0),
        Measurement(2, 8, 20, batch_p50_ms=30.0, batch_p95_ms=33.0, throughput_fps=266.0),
        Measurement(1, 8, 20, batch_p50_ms=50.0, batch_p95_ms=55.0, throughput_fps=160.0),
    ]
    assert pick_best(table, queue_delay_ms=2.0, latency_budget_ms=None) == (table[1], True)
    # 2 ms queueing + 33 ms batch = 35 ms: over a 20 ms budget, so batch 1 wins.
    assert pick_best(table, queue_delay_ms=2.0, latency_budget_ms=20.0) == (table[0], True)
    # Nothing fits 4 ms: the fastest request latency, flagged.
    assert pick_best(table, queue_delay_ms=2.0, latency_budget_ms=4.0) == (table[0], False)


def test_throughput_policy_turns_autotune_on(tmp_path: Path, built_models: Path) -> None:
    version_dir = copy_model(built_models, "efficientnet_lite0", tmp_path / "repo")
    manifest = read_manifest(version_dir)
    settings = PlannerSettings(
        policy="throughput", autotune_time_s=1.0, cache_dir=tmp_path / "cache", pins=FP32
    )
    plan = HardwarePlanner(settings, facts=load_profile("this_machine")).plan(version_dir, manifest)
    assert "autotune (measured" in plan.reasons["autotune"]
    balanced = PlannerSettings(policy="balanced", cache_dir=tmp_path / "cache", pins=FP32)
    plain = HardwarePlanner(balanced, facts=load_profile("this_machine")).plan(
        version_dir, manifest
    )
    assert "autotune" not in plain.reasons
