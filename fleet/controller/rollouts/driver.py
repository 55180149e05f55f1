"""The wave driver: one task per rollout driven here (leadership.py decides which), taking it
through its waves: install (tell the wave's devices, wait for their results), bake (measure the
wave against the devices still on the old version), judge (pass: next wave; fail: roll back;
inconclusive: pause for the operator).

Every step is written to the store before it takes effect, together with the desired state it
implies, so a driver restarted at any point (here or on another replica) picks the rollout up
where it was; a wave that was baking bakes again from the start (its window lived in memory).
The driver's writes are fenced by the rollout's lease: a driver that lost it stops at its next
write (LeaseLost), having changed nothing.
"""

from __future__ import annotations

import asyncio
import time

from fleet.controller.rollouts import windows
from fleet.controller.rollouts.cohorts import cohort, control_cohort, wave_devices
from fleet.controller.rollouts.context import RolloutContext
from fleet.controller.rollouts.gates import DeviceWindow, Gate, certain_failures, judge, parse_gate
from fleet.controller.rollouts.transitions import advance, desired_entry, roll_back
from fleet.controller.store.records import (
    AuditRecord,
    DeviceInstall,
    RolloutRecord,
    RolloutState,
    Verdict,
)

# How often a baking wave looks for a failure that is already certain (early abort).
EARLY_CHECK_S = 0.5


def _installing(rollout: RolloutRecord, devices: list[str]) -> list[str]:
    """The devices of a wave told to install now: all but a control cohort not released yet."""
    held = set() if rollout.control_released else set(rollout.control)
    return [device_id for device_id in devices if device_id not in held]


class WaveDriver:
    def __init__(self, context: RolloutContext, tick_s: float) -> None:
        self._context = context
        # How often a wave that waits for installs looks at live telemetry again.
        self._tick_s = tick_s

    async def drive(self, rollout_id: str) -> None:
        """Drive the rollout until it is finished (or the task is cancelled)."""
        context = self._context
        rollout = context.rollouts[rollout_id]
        if rollout.state == RolloutState.INSTALLING:
            # Taking over (or restarting): the wave's devices hear of it again, wherever they
            # are connected, in case the previous driver died before telling them.
            wave = rollout.waves[rollout.current_wave]
            pending = DeviceInstall.PENDING
            context.wake_devices([d for d in wave.devices if rollout.installs.get(d) == pending])
        while True:
            rollout = context.rollouts[rollout_id]
            if rollout.state.finished:
                return
            if rollout.state == RolloutState.PAUSED:
                await context.wait(rollout_id, 3600)
            elif rollout.state == RolloutState.INSTALLING:
                await self._install_wave(rollout)
            else:
                await self._bake_wave(rollout)

    def _sync_installs_from_telemetry(self, rollout: RolloutRecord) -> bool:
        """Telemetry showing the new version active counts as installed (the result message may
        have been lost in a disconnect or a controller restart)."""
        changed = False
        for device_id, status in rollout.installs.items():
            if status != DeviceInstall.PENDING:
                continue
            sample = self._context.live.latest(device_id)
            model = sample.record.model(rollout.model_name) if sample else None
            if model is not None and model.version == rollout.version:
                rollout.installs[device_id] = DeviceInstall.INSTALLED
                changed = True
        return changed

    async def _install_wave(self, rollout: RolloutRecord) -> None:
        context = self._context
        index = rollout.current_wave
        wave = rollout.waves[index]
        if not wave.devices:
            async with context.lock:
                if rollout.state != RolloutState.INSTALLING or rollout.current_wave != index:
                    return
                wave.devices = wave_devices(rollout, index)
                rollout.control = control_cohort(rollout, index, wave.devices)
                for device_id in _installing(rollout, wave.devices):
                    rollout.installs[device_id] = DeviceInstall.PENDING
                desired = [
                    desired_entry(rollout, device_id)
                    for device_id in _installing(rollout, wave.devices)
                ]
                await context.save(rollout, desired, driver=True)
                await context.decided(
                    rollout,
                    "rollout.wave-started",
                    wave=index,
                    percent=wave.percent,
                    devices=len(wave.devices),
                    control=len(rollout.control),
                )
            context.wake_devices(_installing(rollout, wave.devices))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + rollout.spec.install_timeout_s
        while rollout.state == RolloutState.INSTALLING and rollout.current_wave == index:
            if self._sync_installs_from_telemetry(rollout):
                async with context.lock:
                    await context.save(rollout, driver=True)
            pending = [d for d in wave.devices if rollout.installs.get(d) == DeviceInstall.PENDING]
            if not pending:
                break
            left = deadline - loop.time()
            if left <= 0:
                async with context.lock:
                    for device_id in pending:
                        rollout.installs[device_id] = DeviceInstall.TIMED_OUT
                    await context.save(rollout, driver=True)
                break
            await context.wait(rollout.rollout_id, min(left, self._tick_s))
        async with context.lock:
            if rollout.state != RolloutState.INSTALLING or rollout.current_wave != index:
                return
            total = max(len(wave.devices), 1)
            failed = [d for d in wave.devices if rollout.installs.get(d) == DeviceInstall.FAILED]
            timed_out = [
                d for d in wave.devices if rollout.installs.get(d) == DeviceInstall.TIMED_OUT
            ]
            if len(failed) / total > rollout.spec.max_install_failure_rate:
                reasons = "; ".join(f"{d}: {rollout.install_errors.get(d, '')}" for d in failed)
                wave.verdict = Verdict.FAIL
                wave.reason = f"{len(failed)}/{total} devices failed to install ({reasons})"
                await context.decided(
                    rollout, "rollout.verdict", wave=index, verdict="FAIL", reason=wave.reason
                )
                await roll_back(context, rollout, wave.reason, automatic=True)
            elif len(timed_out) / total > rollout.spec.max_timeout_rate:
                wave.verdict = Verdict.FAIL
                wave.reason = f"{len(timed_out)}/{total} devices did not install in time"
                await context.decided(
                    rollout, "rollout.verdict", wave=index, verdict="FAIL", reason=wave.reason
                )
                await roll_back(context, rollout, wave.reason, automatic=True)
            elif rollout.control_released:
                # The control cohort of the last wave, installed after the wave passed.
                advance(rollout)
                await context.save(rollout, driver=True)
                await context.decided(rollout, "rollout.succeeded")
            else:
                rollout.state = RolloutState.BAKING
                await context.save(rollout, driver=True)

    async def _measure(
        self, rollout: RolloutRecord, index: int, started: float, canary_only: bool = False
    ) -> tuple[list[str], list[str], list[DeviceWindow], list[DeviceWindow]]:
        """(canary ids, baseline ids, canary windows, baseline windows) of the wave since
        `started`; `canary_only` leaves the baseline out (the early-abort check)."""
        context = self._context
        wave_cohort = set(cohort(rollout, index))
        control = [] if rollout.control_released else rollout.control
        canary_ids = [d for d in wave_cohort if rollout.installs.get(d) == DeviceInstall.INSTALLED]
        baseline_ids = (
            []
            if canary_only
            else [d for d in rollout.eligible if d not in wave_cohort or d in control]
        )
        remote = await windows.remote_samples(
            context.store, context.live, [*canary_ids, *baseline_ids], started
        )
        live = context.live
        canary = windows.device_windows(live, rollout, canary_ids, started, True, remote)
        baseline = windows.device_windows(live, rollout, baseline_ids, started, False, remote)
        return canary_ids, baseline_ids, canary, baseline

    async def _bake_wave(self, rollout: RolloutRecord) -> None:
        context = self._context
        index = rollout.current_wave
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + rollout.spec.bake_s
        gates = [parse_gate(text) for text in rollout.spec.gates]
        early: list[tuple[Gate, str]] = []
        while rollout.state == RolloutState.BAKING and rollout.current_wave == index:
            left = deadline - loop.time()
            if left <= 0:
                break
            await context.wait(rollout.rollout_id, min(left, max(self._tick_s, EARLY_CHECK_S)))
            if rollout.state != RolloutState.BAKING or rollout.current_wave != index:
                break
            # Early abort: a gate whose failure is already certain ends the wave now.
            canary_ids, _, canary, _ = await self._measure(rollout, index, started, True)
            need = min(rollout.spec.min_devices, max(len(canary_ids), 1))
            early = certain_failures(
                gates, canary, need, loop.time() - started, rollout.spec.bake_s
            )
            if early:
                break
        canary_ids, baseline_ids, canary, baseline = await self._measure(rollout, index, started)
        async with context.lock:
            if rollout.state != RolloutState.BAKING or rollout.current_wave != index:
                return
            # A cohort smaller than --min-devices needs every one of its devices, not more
            # devices than exist: a 3-device fleet's 1-device canary can pass.
            need_canary = min(rollout.spec.min_devices, max(len(canary_ids), 1))
            need_baseline = min(rollout.spec.min_devices, max(len(baseline_ids), 1))
            verdict, measurements, used_baseline = judge(
                gates,
                index,
                canary,
                baseline,
                rollout.baseline,
                need_canary,
                time.time(),
                min_baseline_devices=need_baseline if baseline_ids else None,
                live_baseline_note=(
                    f"baseline: {len(rollout.control)} control device(s) kept on the old "
                    "version until this last wave is judged"
                    if rollout.control
                    else ""
                ),
            )
            if early:
                # Judged at once: the certain failures fail whatever the rest would say.
                certain = {gate.text: note for gate, note in early}
                measurements = [
                    m.model_copy(
                        update={
                            "verdict": Verdict.FAIL,
                            "note": "; ".join(n for n in (m.note, certain[m.gate]) if n),
                        }
                    )
                    if m.gate in certain
                    else m
                    for m in measurements
                ]
                verdict = Verdict.FAIL
            if baseline_ids and len(baseline) >= need_baseline:
                rollout.baseline = used_baseline
            wave = rollout.waves[index]
            wave.verdict = verdict
            failing = [m for m in measurements if m.verdict != Verdict.PASS]
            wave.reason = "; ".join(
                f"{m.gate}: {m.canary_value:.4g} vs threshold {m.threshold:.4g} {m.verdict.value}"
                + (f" ({m.note})" if m.note else "")
                for m in failing
            )
            # The verdict and its measurements commit in the fenced write, and only then is the
            # decision audited and announced: a leader that lost its lease judges nothing.
            rolled_back = ""
            succeeded = False
            judged: dict[str, object] = {
                "wave": index,
                "verdict": verdict.value,
                "reason": wave.reason,
            }
            record = AuditRecord(
                at=time.time(),
                actor="controller",
                action="rollout.verdict",
                detail={"rollout": rollout.rollout_id, **judged},
            )
            if verdict == Verdict.PASS:
                # The last wave's control cohort, if any, moves only now that the wave passed.
                succeeded, desired = advance(rollout)
                await context.save(
                    rollout, desired, driver=True, measurements=measurements, audit=[record]
                )
                context.wake_devices([entry.device_id for entry in desired])
            elif verdict == Verdict.FAIL:
                rolled_back = f"wave {index + 1} failed its gates: {wave.reason}"
                await roll_back(
                    context, rollout, rolled_back, automatic=True, decided=False,
                    measurements=measurements, audit=[record],
                )  # fmt: skip
            else:
                rollout.state = RolloutState.PAUSED
                rollout.reason = f"wave {index + 1} inconclusive: {wave.reason or 'no gate data'}"
                await context.save(rollout, driver=True, measurements=measurements, audit=[record])
            await context.decided(rollout, "rollout.verdict", audited=True, **judged)
            if rolled_back:
                await context.decided(
                    rollout,
                    "rollout.rolled-back",
                    reason=rolled_back,
                    devices=len(rollout.installs),
                    automatic=True,
                )
            elif verdict == Verdict.PASS:
                if succeeded:
                    await context.decided(rollout, "rollout.succeeded")
            else:
                await context.decided(rollout, "rollout.paused", wave=index, reason=rollout.reason)
