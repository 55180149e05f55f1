"""Rollout logic without the network: gate grammar, three-way verdicts, stable cohorts, pins."""

from __future__ import annotations

import math

import pytest

from common.telemetry import ModelTelemetry
from fleet.controller.live import LiveFleet
from fleet.controller.rollouts.cohorts import cohort_rank
from fleet.controller.rollouts.engine import RolloutEngine
from fleet.controller.rollouts.gates import DeviceWindow, judge, parse_gate
from fleet.controller.store.records import (
    BundleRecord,
    DesiredEntry,
    DeviceRecord,
    RolloutSpec,
    Verdict,
)
from fleet.controller.store.runner import StoreRunner
from fleet.controller.store.sqlite import SqliteStore
from fleet.errors import InvalidRequest


@pytest.mark.parametrize(
    ("text", "baseline", "threshold"),
    [
        ("p95_latency_ms <= 1.2*baseline", 10.0, 12.0),
        ("p95_latency_ms<=baseline+2", 10.0, 12.0),
        ("fps >= 0.95 * baseline - 1", 20.0, 18.0),
        ("error_rate < 0.01", None, 0.01),
        ("drop_rate < 1e-3", None, 0.001),
    ],
)
def test_gate_grammar(text, baseline, threshold):
    assert parse_gate(text).threshold(baseline) == pytest.approx(threshold)


@pytest.mark.parametrize(
    "text", ["p95 <= 1.2*baseline", "fps => baseline", "error_rate < 2*0.01", "latency", ""]
)
def test_bad_gates_are_refused_with_the_reason(text):
    with pytest.raises(InvalidRequest, match="gate"):
        parse_gate(text)


def _window(device: str, p95: float, requests: int = 100, errors: int = 0) -> DeviceWindow:
    figures = ModelTelemetry("m", "2", requests, errors, 0, 15.0, p95 / 2, p95)
    return DeviceWindow(device, figures)


def test_verdicts_are_three_way_and_too_few_devices_never_pass():
    gates = [parse_gate("p95_latency_ms <= 1.2*baseline"), parse_gate("error_rate < 0.01")]
    baseline = [_window("b1", 10), _window("b2", 10)]
    ok, _, used = judge(gates, 0, [_window("c1", 11)], baseline, {}, 1, 0.0)
    assert ok == Verdict.PASS and used["p95_latency_ms"] == 10
    slow, measurements, _ = judge(gates, 0, [_window("c1", 13)], baseline, {}, 1, 0.0)
    assert slow == Verdict.FAIL
    assert measurements[0].canary_value == 13 and measurements[0].threshold == pytest.approx(12)
    erring, _, _ = judge(gates, 0, [_window("c1", 10, errors=5)], baseline, {}, 1, 0.0)
    assert erring == Verdict.FAIL
    # Perfect numbers from too few devices are still only INCONCLUSIVE.
    idle, measurements, _ = judge(gates, 0, [_window("c1", 1)], baseline, {}, 3, 0.0)
    assert idle == Verdict.INCONCLUSIVE
    assert all(m.verdict == Verdict.INCONCLUSIVE for m in measurements)
    # No baseline left and none frozen: a baseline gate cannot be judged.
    alone, measurements, _ = judge(gates, 2, [_window("c1", 10)], [], {}, 1, 0.0)
    assert alone == Verdict.INCONCLUSIVE and math.isnan(measurements[0].threshold)
    frozen, _, _ = judge(gates, 2, [_window("c1", 10)], [], {"p95_latency_ms": 9.0}, 1, 0.0)
    assert frozen == Verdict.PASS


def test_cohorts_are_a_stable_prefix_that_new_devices_do_not_shuffle():
    devices = [f"cam-{i}" for i in range(100)]
    order = sorted(devices, key=lambda d: cohort_rank("m", d))
    grown = sorted([*devices, "cam-new-1", "cam-new-2"], key=lambda d: cohort_rank("m", d))
    assert [d for d in grown if d in set(devices)] == order


async def test_pinned_and_unmatched_devices_are_not_eligible(tmp_path):
    store = StoreRunner(SqliteStore(tmp_path / "c.db"))
    engine = RolloutEngine(store, LiveFleet(10), lambda _: None, tick_s=0.05)
    devices = [
        DeviceRecord(device_id="a", labels={"site": "lobby"}, enrolled_at=0),
        DeviceRecord(device_id="b", labels={"site": "lobby"}, enrolled_at=0),
        DeviceRecord(device_id="c", labels={"site": "dock"}, enrolled_at=0),
    ]
    pinned = DesiredEntry(device_id="b", model="m", version="1", source="pin")
    bundle = BundleRecord(
        sha256="0" * 64, name="m", version="2", size=1, key_id="k", path="/x", uploaded_at=0
    )
    spec = RolloutSpec(bundle_sha256="0" * 64, selector={"site": "lobby"}, steps=[100], bake_s=60)
    rollout = await engine.create(spec, bundle, devices, [pinned])
    assert rollout.eligible == ["a"]
    with pytest.raises(InvalidRequest, match="steps"):
        await engine.create(spec.model_copy(update={"steps": [50, 10, 100]}), bundle, devices, [])
    await engine.stop()
    store.close()


def test_rules_for_a_ten_thousand_device_fleet():
    """Issue 11, item 6, the large fleet: a 1% canary (100 devices) is judged against the 9,900
    still on the old version; one bad device in 100 does not fail a p95 gate judged on the
    median device, but its errors count in the pooled error rate; the last wave, with no
    device left on the old version, is judged against the baseline kept from earlier."""
    gates = [parse_gate("p95_latency_ms <= 1.2*baseline"), parse_gate("error_rate < 0.01")]
    baseline = [_window(f"b{i}", 10.0) for i in range(9_900)]
    canary = [_window(f"c{i}", 10.5) for i in range(99)] + [_window("c99", 80.0)]
    verdict, measurements, used = judge(gates, 0, canary, baseline, {}, 3, 0.0)
    assert verdict == Verdict.PASS
    assert measurements[0].baseline_devices == 9_900 and used["p95_latency_ms"] == 10.0
    erring = [*canary[:-1], _window("c99", 10.0, errors=200, requests=200)]
    failed, _, _ = judge(gates, 0, erring, baseline, {}, 3, 0.0)
    assert failed == Verdict.FAIL  # 200 errors in 10,100 requests: 1.98%
    final, measurements, _ = judge(
        gates, 3, [_window(f"c{i}", 10.5) for i in range(10_000)], [], used, 3, 0.0,
        min_baseline_devices=None,
    )  # fmt: skip
    assert final == Verdict.PASS
    assert "before the rollout or an earlier wave" in measurements[0].note
    # An absolute gate needs no baseline cohort at all.
    alone, _, _ = judge([parse_gate("error_rate < 0.01")], 0, canary, [], {}, 3, 0.0, None)
    assert alone == Verdict.PASS
