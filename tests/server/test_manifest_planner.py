"""`--planner manifest` honours the command line's pins, and its plan says where each value
came from (it said "2 cores available" when given one thread)."""

from __future__ import annotations

from pathlib import Path

from server.manifest import read_manifest
from server.models.runtime_plan import ManifestPlanner
from testkit.repositories import BUILT_MODELS, ONNX_MODEL


def test_command_line_pins_win_and_say_so():
    version_dir = BUILT_MODELS / ONNX_MODEL / "1"
    manifest = read_manifest(version_dir)
    plan = ManifestPlanner(intra_op_threads=1, max_batch_size=2).plan(version_dir, manifest)
    assert plan.intra_op_threads == 1
    assert plan.reasons["intra_op_threads"] == "pinned on the command line"
    assert plan.max_batch_size == 2
    assert plan.reasons["max_batch_size"] == "pinned on the command line"
    assert {"intra_op_threads", "max_batch_size"} <= plan.pinned


def test_without_pins_the_manifest_and_the_cores_decide():
    version_dir: Path = BUILT_MODELS / ONNX_MODEL / "1"
    manifest = read_manifest(version_dir)
    plan = ManifestPlanner().plan(version_dir, manifest)
    assert plan.reasons["intra_op_threads"].endswith("cores available to this process")
    assert plan.max_batch_size == manifest.batching.max_batch_size
    assert "intra_op_threads" not in plan.pinned
