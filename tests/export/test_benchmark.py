"""`--benchmark`: eager, TorchScript and ONNX Runtime measured in one run, recorded in the
report and in the manifest, where the hardware planner can read it. Timing figures themselves
belong to bench/bench_export.py; here we check they are measured and recorded, not their size."""

from __future__ import annotations

from pathlib import Path

from server.manifest import read_manifest
from testkit.export import SAMPLES, export_cli


def test_benchmark_rows_for_every_runtime_at_batch_1_and_planned(tmp_path: Path) -> None:
    result = export_cli(
        f"{SAMPLES}.control_flow:gated_recurrent_head", "--example-input", "N,L,4",
        "--name", "gru", "--benchmark", "--bench-seconds", "0.05", "--max-batch", "4",
        "--bench-threads", "1",
        "--repository", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.report()
    rows = {(row["runtime"], row["batch"]): row for row in report["benchmark"]}
    assert set(rows) == {(r, b) for r in ("eager", "torchscript", "onnx") for b in (1, 4)}
    for row in rows.values():
        assert row["calls"] >= 20
        assert 0 < row["p50_ms"] <= row["p95_ms"]
        assert row["items_per_s"] > 0
    assert report["device"]["cores_available"] >= 1
    assert report["device"]["threads"] == 1
    assert report["device"]["torch"].startswith("2.")

    manifest = read_manifest(tmp_path / "gru" / "1")
    assert manifest.batching.max_batch_size == 4
    recorded = manifest.provenance["export"]
    assert recorded["benchmark"] == report["benchmark"]
    assert recorded["device"]["onnxruntime"] == report["device"]["onnxruntime"]


def test_static_batch_model_is_benchmarked_at_batch_1_only(tmp_path: Path) -> None:
    result = export_cli(
        f"{SAMPLES}.unsupported_onnx:spectral_head", "--example-input", "1,16",
        "--to", "torchscript", "--benchmark", "--bench-seconds", "0.02", "--repository", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = result.report()
    assert {(row["runtime"], row["batch"]) for row in report["benchmark"]} == {
        ("eager", 1),
        ("torchscript", 1),
    }
    manifest = read_manifest(tmp_path / "spectral_head" / "1")
    assert manifest.batching.max_batch_size == 0  # a fixed first dim is not a batch dim
