"""Where the conversion tooling is not installed (the device install has no onnx), int8 is not
attempted: the plan serves fp32 and says which extra enables it, in one log line per process;
a pinned precision is refused with the same reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server.errors import PlanRefused
from server.hardware import convert_job
from server.hardware.planner import HardwarePlanner
from server.hardware.policy import PlannerSettings
from server.manifest import RuntimePins, read_manifest
from testkit.hardware import load_profile
from testkit.tiny_models import write_classifier


def planner(tmp_path: Path, **settings: object) -> HardwarePlanner:
    return HardwarePlanner(
        PlannerSettings(cache_dir=tmp_path / "cache", device_key_file=tmp_path / "key", **settings),  # type: ignore[arg-type]
        facts=load_profile("this_machine"),  # an int8-capable CPU: the planner wants int8
        background=True,
    )


@pytest.fixture
def without_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_job, "missing_tooling", lambda: "onnx")


def test_int8_is_skipped_with_the_extra_named_once(tmp_path, without_onnx, caplog):
    first = write_classifier(tmp_path / "repo", "one", outlier=None)
    second = write_classifier(tmp_path / "repo", "two", outlier=None, seed=3)
    chosen = planner(tmp_path)
    with caplog.at_level(logging.INFO, logger="server.hardware.planner"):
        plans = [chosen.plan(path, read_manifest(path)) for path in (first, second)]
    for plan in plans:
        assert plan.precision == "fp32" and not plan.pending
        assert "pip install 'edgefleet[int8]'" in plan.reasons["precision"]
        assert chosen.upgrade_job(first, read_manifest(first), plan) is None
    # Each plan's own reasons say it too (at INFO, with the rest of the plan); the line that
    # tells the operator is written once.
    told = [
        record.getMessage()
        for record in caplog.records
        if "edgefleet[int8]" in record.getMessage() and not record.getMessage().startswith("plan ")
    ]
    assert len(told) == 1, told


def test_pinned_int8_without_tooling_is_refused(tmp_path, without_onnx):
    version_dir = write_classifier(tmp_path / "repo", "one", outlier=None)
    pinned = planner(tmp_path, pins=RuntimePins(precision="int8"))
    with pytest.raises(PlanRefused, match=r"edgefleet\[int8\]"):
        pinned.plan(version_dir, read_manifest(version_dir))
