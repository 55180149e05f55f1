"""Which devices the last wave holds back as its control cohort (issue 24, item 3)."""

from __future__ import annotations

from fleet.controller.rollouts.cohorts import control_cohort, wave_devices
from fleet.controller.store.records import RolloutRecord, RolloutSpec, WaveRecord


def _rollout(devices: int, steps: list[float], gates: list[str], min_devices: int = 1):
    spec = RolloutSpec(
        bundle_sha256="a" * 64, steps=steps, bake_s=1, gates=gates, min_devices=min_devices
    )
    rollout = RolloutRecord(
        rollout_id="r", model_name="m", version="2", bundle_size=1, spec=spec,
        waves=[WaveRecord(index=i, percent=step) for i, step in enumerate(steps)],
        eligible=[f"d{i:03}" for i in range(devices)], created_at=0, updated_at=0,
    )  # fmt: skip
    for index, wave in enumerate(rollout.waves):
        wave.devices = wave_devices(rollout, index)
    return rollout


RELATIVE = ["p95_latency_ms <= 1.2*baseline", "error_rate < 0.01"]


def test_the_last_wave_holds_back_a_control_when_a_gate_is_relative():
    rollout = _rollout(100, [10, 50, 100], RELATIVE)
    last = rollout.waves[-1].devices
    assert control_cohort(rollout, 0, rollout.waves[0].devices) == []
    assert control_cohort(rollout, 1, rollout.waves[1].devices) == []
    assert control_cohort(rollout, 2, last) == last[-5:]  # 5% of 100, the last in order
    # --min-devices of them where the fleet allows.
    rollout = _rollout(100, [10, 50, 100], RELATIVE, min_devices=8)
    assert control_cohort(rollout, 2, rollout.waves[-1].devices) == last[-8:]
    # Absolute gates need no baseline: no control.
    rollout = _rollout(100, [10, 50, 100], ["error_rate < 0.01"])
    assert control_cohort(rollout, 2, rollout.waves[-1].devices) == []


def test_the_control_is_never_the_whole_fleet():
    three = _rollout(3, [33, 66, 100], RELATIVE, min_devices=3)
    assert control_cohort(three, 2, three.waves[-1].devices) == ["d002"]  # all of wave 3
    single = _rollout(3, [100], RELATIVE, min_devices=3)
    assert control_cohort(single, 0, single.waves[0].devices) == ["d001", "d002"]
    alone = _rollout(1, [100], RELATIVE)
    assert control_cohort(alone, 0, alone.waves[0].devices) == []
