"""Rollouts end to end: a real controller, real agents beside real edge servers on loopback,
real traffic. Bake times and telemetry intervals are seconds so the tests run in seconds."""

from __future__ import annotations

import asyncio

import pytest

from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import (
    LAST,
    LENIENT_GATES,
    MODEL,
    STATE,
    finished,
    rollout_request,
    rollout_state,
    upload,
    wait_for,
)

# Whole rollouts, wave by wave with real bakes: seconds per test, system tests.
pytestmark = pytest.mark.system

# ~20 ms more work per frame than the 1-layer model: measurably slower even on a busy CPU
# where the fast model's p95 is itself several milliseconds of scheduling noise.
SLOW_LAYERS = 2500


async def test_canary_pass_promotes_through_every_wave(tmp_path, admin, nodes, signing_keys):
    bundle = await upload(admin, tmp_path, signing_keys, "2")
    created = await admin.stub.CreateRollout(rollout_request(bundle, gates=LENIENT_GATES))
    rollout = await wait_for(
        lambda: finished(admin, created.rollout.rollout_id), 60, "rollout", describe=lambda: LAST
    )
    assert rollout.state == STATE.ROLLOUT_STATE_SUCCEEDED, rollout.reason
    assert [wave.target_devices for wave in rollout.waves] == [1, 1, 1]
    assert all(wave.verdict == admin_pb2.VERDICT_PASS for wave in rollout.waves)
    assert [node.active() for node in nodes] == ["2", "2", "2"]
    assert all(node.failed == 0 for node in nodes)
    # The previous version stays on disk for an instant local rollback.
    assert all((node.repository / MODEL / "1" / "manifest.json").is_file() for node in nodes)
    explained = await admin.stub.ExplainRollout(
        admin_pb2.ExplainRolloutRequest(rollout_id=rollout.rollout_id)
    )
    assert {m.wave for m in explained.measurements} == {0, 1, 2}
    assert all(m.verdict == admin_pb2.VERDICT_PASS for m in explained.measurements)

    # The last device to install (the control cohort, after the last wave is judged) reports
    # its active version with its next message: the controller's view follows within moments.
    async def reported() -> list[tuple[str, str]]:
        devices = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
        return [(d.models[0].desired_version, d.models[0].actual_version) for d in devices.devices]

    async def all_report_version_2() -> bool:
        return await reported() == [("2", "2")] * len(nodes)

    await wait_for(all_report_version_2, 20, "every device reporting version 2")


async def test_canary_fail_rolls_back_and_why_shows_the_numbers(
    tmp_path, admin, nodes, signing_keys
):
    bundle = await upload(admin, tmp_path, signing_keys, "2", slow_layers=SLOW_LAYERS)
    created = await admin.stub.CreateRollout(rollout_request(bundle))
    rollout = await wait_for(
        lambda: finished(admin, created.rollout.rollout_id), 60, "rollout", describe=lambda: LAST
    )
    assert rollout.state == STATE.ROLLOUT_STATE_ROLLED_BACK
    assert "p95_latency_ms" in rollout.reason, rollout
    assert rollout.waves[0].verdict == admin_pb2.VERDICT_FAIL
    assert rollout.waves[1].target_devices == 0, "a failed wave must not reach the next one"
    await wait_for(lambda: [n.active() for n in nodes] == ["1", "1", "1"], 20, "rollback")
    explained = await admin.stub.ExplainRollout(
        admin_pb2.ExplainRolloutRequest(rollout_id=rollout.rollout_id)
    )
    latency = next(m for m in explained.measurements if m.metric == "p95_latency_ms")
    assert latency.verdict == admin_pb2.VERDICT_FAIL
    assert latency.canary_value > latency.threshold
    assert latency.threshold == pytest.approx(1.5 * latency.baseline_value + 1)
    assert latency.canary_devices == 1 and latency.baseline_devices == 2


async def test_an_idle_fleet_pauses_and_never_promotes(tmp_path, admin, nodes, signing_keys):
    for node in nodes:  # night: no camera sends a frame
        assert node.traffic is not None
        node.traffic.cancel()
    bundle = await upload(admin, tmp_path, signing_keys, "2")
    created = await admin.stub.CreateRollout(
        rollout_request(bundle, min_devices=3, bake_s=1.0, gates=LENIENT_GATES)
    )
    rollout_id = created.rollout.rollout_id
    rollout = await wait_for(
        lambda: _in_state(admin, rollout_id, STATE.ROLLOUT_STATE_PAUSED), 30, "pause"
    )
    assert rollout.waves[0].verdict == admin_pb2.VERDICT_INCONCLUSIVE
    assert "0 wave devices reported enough traffic, 1 needed" in rollout.reason
    await asyncio.sleep(2.0)
    rollout = await rollout_state(admin, rollout_id)
    assert rollout.state == STATE.ROLLOUT_STATE_PAUSED
    assert rollout.current_wave == 0
    assert sorted(node.active() for node in nodes) == ["1", "1", "2"]


async def test_a_three_device_fleet_passes_with_min_devices_3_and_relative_gates(
    tmp_path, admin, nodes, signing_keys
):
    """Issue 11, item 6: a 1-device canary on a 3-device fleet needs that one device, not 3.
    Issue 24, item 3: the last wave is not judged against history (the baseline the devices
    had before the rollout, which machine load may have moved since) but against a control
    cohort kept on the old version until that wave is judged, and then installed."""
    await asyncio.sleep(1.5)  # a pre-rollout window of telemetry on version 1
    bundle = await upload(admin, tmp_path, signing_keys, "2")
    created = await admin.stub.CreateRollout(
        rollout_request(bundle, steps=[34, 100], min_devices=3, gates=LENIENT_GATES)
    )
    rollout = await wait_for(
        lambda: finished(admin, created.rollout.rollout_id), 60, "rollout", describe=lambda: LAST
    )
    assert rollout.state == STATE.ROLLOUT_STATE_SUCCEEDED, rollout.reason
    assert [wave.target_devices for wave in rollout.waves] == [2, 1]
    explained = await admin.stub.ExplainRollout(
        admin_pb2.ExplainRolloutRequest(rollout_id=rollout.rollout_id)
    )
    last = [m for m in explained.measurements if m.wave == 1 and m.metric == "p95_latency_ms"]
    assert last and last[0].baseline_devices == 1 and last[0].verdict == admin_pb2.VERDICT_PASS
    assert "control device(s) kept on the old version" in last[0].note, last[0].note
    assert [node.active() for node in nodes] == ["2", "2", "2"]


async def _in_state(admin, rollout_id: str, state: int) -> admin_pb2.Rollout | None:
    rollout = await rollout_state(admin, rollout_id)
    return rollout if rollout.state == state else None
