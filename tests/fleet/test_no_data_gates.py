"""No data never passes a gate (issue 24, items 1 and 2): a version failing every request is
rolled back whichever gates the rollout has (latency only, fps only, errors only), and at once:
a failure that is already certain ends the wave long before its bake would."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from common.telemetry import ModelTelemetry
from fleet.bundle import build_bundle
from fleet.controller.app import ControllerApp
from fleet.controller.rollouts.gates import DeviceWindow, certain_failures, judge, parse_gate
from fleet.controller.store.records import Verdict
from fleet.keys import load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from server.models.stats import ModelStats
from testkit.fleet import MODEL, STATE, controller_settings, finished, rollout_request, wait_for
from testkit.fleet_models import build_poisoned_model_dir

# Long enough that a rollback inside EARLY_ABORT_S can only be the early abort.
BAKE_S = 60.0
EARLY_ABORT_S = 15.0


@pytest.fixture
async def controller(tmp_path: Path, signing_keys: tuple[Path, Path]):
    """One store is enough here: what is judged is the same on both (the machine is shared)."""
    app = ControllerApp(controller_settings(tmp_path / "controller", signing_keys[1].parent))
    await app.start()
    yield app
    await app.stop(0.2)


def _window(device: str, requests: int, errors: int, p95: float, fps: float) -> DeviceWindow:
    return DeviceWindow(device, ModelTelemetry("m", "2", requests, errors, 0, fps, p95, p95))


def test_server_latency_without_a_success_is_no_data_and_fps_counts_successes():
    stats = ModelStats("m", "1")
    for _ in range(50):
        stats.record_failure(0.001)
    fps, p50, p95 = stats.window()
    assert fps == 0.0 and math.isnan(p50) and math.isnan(p95)
    stats.record_success(total_s=0.004, queue_s=0.0, input_s=0.0, infer_s=0.004, output_s=0.0)
    fps, p50, p95 = stats.window()
    assert fps > 0 and p95 == pytest.approx(4.0)


@pytest.mark.parametrize(
    "gate",
    [
        "p95_latency_ms <= 1.2*baseline",
        "p50_latency_ms <= 100",
        "fps >= 0.95*baseline",
        "error_rate < 0.01",
    ],
)
def test_zero_successful_requests_never_pass(gate):
    canary = [_window("c1", 200, 200, math.nan, 0.0)]
    baseline = [_window("b1", 200, 0, 10.0, 9.0), _window("b2", 200, 0, 10.0, 9.0)]
    gates = [parse_gate(gate)]
    for live, frozen in ((baseline, {}), ([], {"p95_latency_ms": 10.0, "fps": 9.0})):
        verdict, measurements, _ = judge(gates, 0, canary, live, frozen, 1, 0.0)
        assert verdict == Verdict.FAIL, measurements
    # Part way through the bake, the failure is already certain whatever the gate.
    assert certain_failures(gates, canary, 1, 2.0, 60.0)


def test_a_device_without_data_is_the_slowest_and_an_error_ceiling_fails_early():
    good = [_window(f"c{i}", 100, 0, 10.0, 9.0) for i in range(2)]
    dead = [_window(f"d{i}", 100, 100, math.nan, 0.0) for i in range(3)]
    latency = [parse_gate("p95_latency_ms <= 1000")]
    # Most wave devices serve nothing: the median device has no latency, which fails.
    assert judge(latency, 0, [*good, *dead], [], {}, 1, 0.0)[0] == Verdict.FAIL
    assert judge(latency, 0, [*good, *good, dead[0]], [], {}, 1, 0.0)[0] == Verdict.PASS
    errors = [parse_gate("error_rate < 0.01")]
    half = [_window("c1", 100, 50, 10.0, 9.0)]
    assert certain_failures(errors, half, 1, 5.0, 60.0)  # 50 / 1,200 at best: over 1%
    assert not certain_failures(errors, half, 1, 0.2, 60.0)  # 50 / 30,100: could still pass
    assert not certain_failures(errors, [_window("c1", 100, 0, 10.0, 9.0)], 1, 5.0, 60.0)


@pytest.mark.parametrize(
    "gates",
    [
        ["p95_latency_ms <= 1.2*baseline"],
        ["fps >= 0.95*baseline"],
        ["error_rate < 0.01"],
    ],
    ids=["latency-only", "fps-only", "error-only"],
)
async def test_a_version_failing_every_request_is_rolled_back_early_by_any_gate_set(
    tmp_path, admin, nodes, signing_keys, gates
):
    source = build_poisoned_model_dir(tmp_path / "build", MODEL, "1")
    bundle = build_bundle(source, MODEL, "2", load_private_key(signing_keys[0]), tmp_path)
    uploaded = await admin.upload_bundle(bundle)
    loop = asyncio.get_running_loop()
    began = loop.time()
    created = await admin.stub.CreateRollout(rollout_request(uploaded, gates=gates, bake_s=BAKE_S))
    rollout = await wait_for(
        lambda: finished(admin, created.rollout.rollout_id), EARLY_ABORT_S, "early abort"
    )
    took = loop.time() - began
    assert rollout.state == STATE.ROLLOUT_STATE_ROLLED_BACK, rollout
    assert rollout.waves[0].verdict == admin_pb2.VERDICT_FAIL
    assert rollout.waves[1].target_devices == 0
    assert "early abort" in rollout.reason and "no data" in rollout.reason, rollout.reason
    assert took < BAKE_S / 4
    print(f"{gates}: rolled back {took:.1f} s after the rollout began (bake {BAKE_S:g} s)")
    await wait_for(lambda: [n.active() for n in nodes] == ["1", "1", "1"], 20, "rollback")
