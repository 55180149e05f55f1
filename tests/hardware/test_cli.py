"""`edgefleet probe` through the real umbrella CLI."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgefleet.cli import build_app
from testkit.repositories import TORCHSCRIPT_MODEL, copy_model

# Wide enough that click never wraps an error message mid-phrase.
WIDE = {"COLUMNS": "400"}


def run_probe(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), ["probe", "--no-torch-gpu", *args], env=WIDE)
    return result.exit_code, result.stdout


def test_probe_prints_facts_as_json() -> None:
    code, out = run_probe("--output", "json")
    assert code == 0, out
    payload = json.loads(out)
    assert payload["plan"] is None and payload["error"] is None
    assert payload["facts"]["cpu"]["logical_cores"] >= 1
    assert "CPUExecutionProvider" in payload["facts"]["onnx_providers"]


def test_probe_plans_a_model_with_pins_and_reasons(repository: Path) -> None:
    code, out = run_probe(
        "--model", str(repository / "efficientnet_lite0"),
        "--policy", "latency", "--precision", "fp32", "--intra-op-threads", "1",
        "--output", "json",
    )  # fmt: skip
    assert code == 0, out
    payload = json.loads(out)
    plan = payload["plan"]
    assert payload["model"] == "efficientnet_lite0/1"
    assert plan["precision"] == "fp32" and plan["intra_op_threads"] == 1
    assert plan["pinned"] == ["intra_op_threads", "precision"]
    assert plan["reasons"]["precision"] == "fp32: pinned on the command line"
    assert plan["max_batch_size"] == 1 and "latency policy" in plan["reasons"]["max_batch_size"]


def test_probe_table_output_shows_the_plan(repository: Path) -> None:
    code, out = run_probe("--model", str(repository / "efficientnet_lite0"), "--precision", "fp32")
    assert code == 0, out
    assert "Hardware facts" in out and "Plan for efficientnet_lite0/1" in out
    assert "pinned on the command line" in out


def test_probe_refuses_a_plan_that_does_not_fit(repository: Path) -> None:
    code, out = run_probe(
        "--model", str(repository / "efficientnet_lite0" / "1"),
        "--precision", "fp32", "--memory-budget-mb", "5", "--output", "json",
    )  # fmt: skip
    assert code == 1
    error = json.loads(out)["error"]
    assert "needs" in error and "only 5.0 MiB may be used" in error


def test_probe_rejects_bad_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["probe", "--policy", "fastest"], env=WIDE)
    assert result.exit_code == 2 and "latency, throughput or balanced" in result.output
    result = CliRunner().invoke(build_app(), ["probe", "--model", str(tmp_path)], env=WIDE)
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_probe_shows_a_torchscript_models_worker_and_refuses_what_cannot_fit(
    tmp_path: Path, built_models: Path
) -> None:
    """A real memory budget (the operator's pin) instead of a device with less memory."""
    copy_model(built_models, TORCHSCRIPT_MODEL, tmp_path)
    model = str(tmp_path / TORCHSCRIPT_MODEL)
    code, out = run_probe("--model", model, "--memory-budget-mb", "400", "--output", "json")
    assert code == 0, out
    memory = json.loads(out)["plan"]["reasons"]["memory"]
    assert "+ worker process 235.0 MiB (estimated, confined)" in memory
    code, out = run_probe("--model", model, "--memory-budget-mb", "200", "--output", "json")
    assert code == 1, out
    error = json.loads(out)["error"]
    assert "worker process 235.0 MiB" in error
    assert "only 200.0 MiB may be used (the 200 MiB memory budget)" in error
