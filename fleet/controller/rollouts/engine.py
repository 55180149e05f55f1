"""The rollout engine: waves, bakes, three-way gate verdicts, automatic rollback.

Every transition is written to the store before it takes effect, together with the desired
state it implies, so a controller restarted at any point picks the rollout up where it was
(a wave that was baking bakes again from the start: its telemetry window lived in memory).
Rollback rewrites desired state, so a device that was offline rolls back when it returns.

Replicas. Every controller on a store runs this engine; each unfinished rollout has a lease
(`rollout:<id>`, fleet/controller/store/pg_lease.py) and only the replica holding it drives the
rollout (installs, bakes, verdicts, automatic rollback). Every replica tries to take or renew the
lease of every unfinished rollout each third of the lease time, so when the driving replica dies
another takes over within one lease time and re-reads the rollout from the store. The driver's
writes carry the lease's fencing token (`Fence`): a leader that was paused past its lease cannot
write after waking, so no wave is judged twice. Any replica serves operator actions and agents'
install reports: they read, change and compare-and-set the rollout on its `revision`
(`StaleRevision` re-reads and retries), and every committed change is announced to the other
replicas (fleet/controller/replication/changefeed.py), which re-read it and wake its driver. Gate
windows use this replica's live telemetry for the devices connected to it and the store's telemetry
(flushed every `telemetry_flush_s`) for devices connected elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence

from common.telemetry import TelemetryRecord
from fleet.controller.live import LiveFleet, TelemetrySample
from fleet.controller.rollouts.gates import DeviceWindow, cohort_figures, judge, parse_gate
from fleet.controller.store.protocol import Fence, LeaseLost, StaleRevision, StoreRunner
from fleet.controller.store.records import (
    PIN_SOURCE,
    AuditRecord,
    BundleRecord,
    DesiredEntry,
    DeviceInstall,
    DeviceRecord,
    Measurement,
    PreviousVersion,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    Verdict,
    WaveRecord,
)
from fleet.errors import Conflict, InvalidRequest, NotFound

# One logger for the rollout subsystem: operators (and tests) follow rollouts by its name.
logger = logging.getLogger(__package__)
# An operator action or install report that keeps meeting newer revisions gives up after this.
CAS_ATTEMPTS = 8


def cohort_rank(model: str, device_id: str) -> str:
    """Stable order of devices for a model: waves take a growing prefix, so cohorts never
    shuffle between waves, rollouts or restarts."""
    return hashlib.sha256(f"{model}\0{device_id}".encode()).hexdigest()


def matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def validate_steps(steps: Sequence[float]) -> None:
    if not steps:
        raise InvalidRequest("steps must not be empty")
    if any(step <= 0 or step > 100 for step in steps):
        raise InvalidRequest("every step is a percentage in (0, 100]")
    if list(steps) != sorted(set(steps)):
        raise InvalidRequest("steps must be strictly increasing")
    if steps[-1] != 100:
        raise InvalidRequest("the last step must be 100")


def _counter_delta(before: int, after: int) -> int:
    """Growth of a cumulative counter; a smaller value means it restarted (model reloaded)."""
    return after - before if after >= before else after


def lease_name(rollout_id: str) -> str:
    return f"rollout:{rollout_id}"


def _replace(target: RolloutRecord, source: RolloutRecord) -> None:
    """Make `target` (the object drivers hold) a copy of `source`, in place."""
    fresh = source.model_copy(deep=True)
    for name in RolloutRecord.model_fields:
        setattr(target, name, getattr(fresh, name))


class RolloutEngine:
    def __init__(
        self,
        store: StoreRunner,
        live: LiveFleet,
        notify: Callable[[Iterable[str]], None],
        tick_s: float,
        *,
        replica: str = "local",
        lease_ttl_s: float = 10.0,
        announce: Callable[[str, Sequence[str], int], None] | None = None,
        on_decision: Callable[[RolloutRecord, str, dict[str, object]], None] | None = None,
        leases: StoreRunner | None = None,
    ) -> None:
        self._store = store
        # Lease renewals on their own store thread: they must not queue behind a reconnect
        # storm's thousands of store calls (a late renewal loses the lease).
        self._leases = leases or store
        self._live = live
        self._notify = notify
        self._tick_s = tick_s
        self.replica = replica
        self._lease_ttl_s = lease_ttl_s
        self._announce = announce or (lambda kind, ids, revision: None)
        # Told of every decision and rollback after it is committed (webhooks).
        self._on_decision = on_decision
        # Fencing tokens of the rollouts this replica drives (holds the lease of).
        self._tokens: dict[str, int] = {}
        self._leader: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._confirming: set[tuple[str, str]] = set()
        # Leases taken over from another replica (or after this one lost its own), lost, and
        # failed lease rounds (the store away): metrics.
        self.takeovers = 0
        self.leases_lost = 0
        self.lease_round_failures = 0
        self._rollouts: dict[str, RolloutRecord] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        # The last copy of each rollout the store accepted: a failed write restores it.
        self._committed: dict[str, RolloutRecord] = {}
        self._failures: dict[str, int] = {}
        self._restarts: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Driver crashes since start (a store error, a bug): each is logged and retried.
        self.driver_failures = 0
        # Decisions the controller took on its own since start: "rollout.verdict:PASS", ...
        self.decisions: dict[str, int] = {}

    async def start(self) -> None:
        for rollout in await self._store.list_rollouts():
            self._rollouts[rollout.rollout_id] = rollout
            self._committed[rollout.rollout_id] = rollout.model_copy(deep=True)
            self._wake.setdefault(rollout.rollout_id, asyncio.Event())
        await self._lead_round()
        self._leader = asyncio.create_task(self._lead_forever(), name="rollout-leases")

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._tasks.values(), *self._restarts, *self._side_tasks]
        if self._leader is not None:
            tasks.append(self._leader)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        # A clean stop hands the leases over now instead of after they expire.
        for rollout_id in list(self._tokens):
            try:
                await self._leases.release_lease(lease_name(rollout_id), self.replica)
            except Exception:
                logger.warning("could not release the lease of rollout %s", rollout_id)
        self._tokens.clear()

    # leadership
    def driving(self, rollout_id: str) -> bool:
        return rollout_id in self._tokens

    def driven(self) -> list[str]:
        return sorted(self._tokens)

    async def _lead_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ttl_s / 3)
            try:
                await self._lead_round()
            except Exception:
                self.lease_round_failures += 1
                logger.exception("renewing rollout leases failed; retrying")

    async def _lead_round(self) -> None:
        """Take or renew the lease of every unfinished rollout; drive those held, stop driving
        those lost. Also picks up rollouts other replicas created."""
        for stored in await self._leases.list_rollouts():
            self._merge(stored)
        for rollout_id, rollout in list(self._rollouts.items()):
            if rollout.state.finished:
                if self._tokens.pop(rollout_id, None) is not None:
                    await self._leases.release_lease(lease_name(rollout_id), self.replica)
                continue
            await self._lead_one(rollout_id)

    async def _lead_one(self, rollout_id: str) -> None:
        token = await self._leases.acquire_lease(
            lease_name(rollout_id),
            self.replica,
            self._lease_ttl_s,
        )
        held = self._tokens.get(rollout_id)
        if token == held:
            return
        if held is not None:
            self._lost(rollout_id, f"lease renewed with a new token {token}" if token else "")
        if token is None:
            return
        # Driving from what the store holds now, not from this replica's copy.
        async with self._lock:
            fresh = await self._store.get_rollout(rollout_id)
            if fresh is None:
                return
            self._install(fresh)
            self._tokens[rollout_id] = token
        if token > 1:
            self.takeovers += 1
        logger.info(
            "rollout %s: driving it here (%s, fencing token %d)", rollout_id, self.replica, token
        )
        if rollout_id not in self._tasks:
            self._spawn(rollout_id)

    def _lost(self, rollout_id: str, why: str = "") -> None:
        """Stop driving: another replica holds the lease now (or will)."""
        if self._tokens.pop(rollout_id, None) is None:
            return
        self.leases_lost += 1
        logger.warning(
            "rollout %s: lost its lease%s; another replica drives it",
            rollout_id, f" ({why})" if why else "",
        )  # fmt: skip
        task = self._tasks.pop(rollout_id, None)
        if task is not None:
            task.cancel()

    def _install(self, fresh: RolloutRecord) -> None:
        """Take the store's copy of a rollout (in place: drivers hold the object)."""
        current = self._rollouts.get(fresh.rollout_id)
        if current is None:
            self._rollouts[fresh.rollout_id] = fresh
        else:
            _replace(current, fresh)
        self._committed[fresh.rollout_id] = fresh.model_copy(deep=True)
        self._wake.setdefault(fresh.rollout_id, asyncio.Event())

    def _merge(self, stored: RolloutRecord) -> None:
        current = self._rollouts.get(stored.rollout_id)
        if current is None or stored.revision > current.revision:
            self._install(stored)

    async def refresh(self, rollout_id: str, revision: int = 0) -> None:
        """Another replica changed the rollout: re-read it, and wake its driver if it is here."""
        current = self._rollouts.get(rollout_id)
        if current is not None and revision and current.revision >= revision:
            return
        async with self._lock:
            fresh = await self._store.get_rollout(rollout_id)
            if fresh is not None:
                self._merge(fresh)
        if (event := self._wake.get(rollout_id)) is not None:
            event.set()
        if fresh is not None and not fresh.state.finished and rollout_id not in self._tokens:
            # A new rollout made elsewhere: try for its lease now, not at the next round.
            await self._lead_one(rollout_id)

    def _spawn(self, rollout_id: str) -> None:
        self._wake.setdefault(rollout_id, asyncio.Event())
        task = asyncio.create_task(self._drive(rollout_id), name=f"rollout-{rollout_id}")
        self._tasks[rollout_id] = task
        task.add_done_callback(lambda done: self._driver_done(rollout_id, done))

    def _driver_done(self, rollout_id: str, task: asyncio.Task[None]) -> None:
        """Supervision: a driver that died is logged, counted and restarted with backoff."""
        if self._tasks.get(rollout_id) is task:
            del self._tasks[rollout_id]
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        if error is None:
            self._failures.pop(rollout_id, None)
            return
        if isinstance(error, LeaseLost):
            self._lost(rollout_id, "a fenced write was refused")
            return
        if isinstance(error, StaleRevision):
            # Another replica changed the rollout (an operator, an install report); the copy
            # was re-read: carry on from it at once.
            if rollout_id in self._tokens and rollout_id not in self._tasks:
                self._spawn(rollout_id)
            return
        self.driver_failures += 1
        failures = self._failures[rollout_id] = self._failures.get(rollout_id, 0) + 1
        delay = min(self._tick_s * 2**failures, 30.0)
        logger.error(
            "rollout %s: driver failed (%d in a row); restarting in %.1fs",
            rollout_id, failures, delay, exc_info=error,
        )  # fmt: skip
        restart = asyncio.create_task(self._restart(rollout_id, delay))
        self._restarts.add(restart)
        restart.add_done_callback(self._restarts.discard)

    async def _restart(self, rollout_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._stopping and rollout_id not in self._tasks and rollout_id in self._tokens:
            self._spawn(rollout_id)

    # queries
    def get(self, rollout_id: str) -> RolloutRecord:
        if not rollout_id:
            if not self._rollouts:
                raise NotFound("no rollouts yet")
            return max(self._rollouts.values(), key=lambda rollout: rollout.created_at)
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            raise NotFound(f"no rollout {rollout_id!r}")
        return rollout

    def list_rollouts(self) -> list[RolloutRecord]:
        return sorted(self._rollouts.values(), key=lambda rollout: rollout.created_at)

    async def measurements(self, rollout_id: str) -> list[Measurement]:
        return await self._store.measurements(rollout_id)

    # operator actions
    async def create(
        self,
        spec: RolloutSpec,
        bundle: BundleRecord,
        devices: Sequence[DeviceRecord],
        desired: Sequence[DesiredEntry],
    ) -> RolloutRecord:
        validate_steps(spec.steps)
        for gate in spec.gates:
            parse_gate(gate)
        model = bundle.name
        async with self._lock:
            for other in self._rollouts.values():
                if other.model_name == model and not other.state.finished:
                    raise Conflict(
                        f"rollout {other.rollout_id} of {model} is still {other.state.value}"
                    )
            current = {(entry.device_id, entry.model): entry for entry in desired}
            eligible = sorted(
                (
                    device.device_id
                    for device in devices
                    if matches(device.labels, spec.selector)
                    and getattr(current.get((device.device_id, model)), "source", "") != PIN_SOURCE
                ),
                key=lambda device_id: cohort_rank(model, device_id),
            )
            if not eligible:
                raise InvalidRequest(f"no unpinned device matches the selector {spec.selector}")
            previous: dict[str, PreviousVersion] = {}
            by_id = {device.device_id: device for device in devices}
            for device_id in eligible:
                entry = current.get((device_id, model))
                if entry is not None and entry.version != bundle.version:
                    previous[device_id] = PreviousVersion(
                        version=entry.version,
                        bundle_sha256=entry.bundle_sha256,
                        bundle_size=entry.bundle_size,
                    )
                    continue
                active = by_id[device_id].active_versions.get(model)
                if active and active != bundle.version:
                    previous[device_id] = PreviousVersion(version=active)
            now = time.time()
            rollout = RolloutRecord(
                rollout_id=uuid.uuid4().hex[:12],
                model_name=model,
                version=bundle.version,
                bundle_size=bundle.size,
                spec=spec,
                waves=[WaveRecord(index=i, percent=step) for i, step in enumerate(spec.steps)],
                eligible=eligible,
                previous=previous,
                created_at=now,
                updated_at=now,
            )
            # The pre-rollout baseline: the same devices on the old version over the last bake
            # length. Waves judge relative gates against it when too few devices are left on
            # the old version (the last wave, a single 100% step, a small fleet).
            loop_now = asyncio.get_running_loop().time()
            before = self._windows(rollout, eligible, loop_now - spec.bake_s, new_version=False)
            if before:
                rollout.baseline = cohort_figures(before)
            await self._save(rollout)
            self._rollouts[rollout.rollout_id] = rollout
            self._wake.setdefault(rollout.rollout_id, asyncio.Event())
        # Drive it here unless another replica takes the lease first (it heard of it).
        await self._lead_one(rollout.rollout_id)
        return rollout

    async def _change(
        self, rollout_id: str, change: Callable[[RolloutRecord], Awaitable[object]]
    ) -> RolloutRecord:
        """Read-change-write under the lock, again from the store's copy when another replica
        wrote the rollout in between (`_save` re-read it)."""
        for _ in range(CAS_ATTEMPTS):
            try:
                async with self._lock:
                    rollout = self.get(rollout_id)
                    await change(rollout)
            except StaleRevision:
                continue
            if event := self._wake.get(rollout.rollout_id):
                event.set()
            return rollout
        raise Conflict(f"rollout {rollout_id} keeps changing; try again")

    async def promote(self, rollout_id: str) -> RolloutRecord:
        async def change(rollout: RolloutRecord) -> None:
            if rollout.state.finished:
                raise Conflict(f"rollout {rollout.rollout_id} already {rollout.state.value}")
            wave = rollout.waves[rollout.current_wave]
            wave.verdict, wave.reason = Verdict.PASS, "promoted by the operator"
            succeeded = self._advance(rollout)
            await self._save(rollout)
            if succeeded:
                await self._decided(rollout, "rollout.succeeded")

        return await self._change(rollout_id, change)

    async def abort(self, rollout_id: str, reason: str) -> RolloutRecord:
        async def change(rollout: RolloutRecord) -> None:
            if rollout.state.finished:
                raise Conflict(f"rollout {rollout.rollout_id} already {rollout.state.value}")
            await self._roll_back(rollout, reason or "aborted by the operator")

        return await self._change(rollout_id, change)

    async def rollback(self, rollout_id: str) -> RolloutRecord:
        async def change(rollout: RolloutRecord) -> None:
            if rollout.state == RolloutState.ROLLED_BACK:
                raise Conflict(f"rollout {rollout.rollout_id} is already rolled back")
            later = [
                other
                for other in self._rollouts.values()
                if other.model_name == rollout.model_name and other.created_at > rollout.created_at
            ]
            if later:
                latest = max(later, key=lambda other: other.created_at)
                raise Conflict(
                    f"rollout {rollout.rollout_id} ({rollout.model_name} {rollout.version}) was "
                    f"superseded by rollout {latest.rollout_id} (version {latest.version}): only "
                    "the latest rollout of a model can be rolled back; roll that one back, or pin"
                )
            await self._roll_back(rollout, "rolled back by the operator")

        return await self._change(rollout_id, change)

    async def pinned(self, device_id: str, model: str) -> None:
        """A pin takes the device out of every unfinished rollout of the model: no later wave
        installs on it and no rollback moves it."""

        async def change(rollout: RolloutRecord) -> None:
            if rollout.state.finished or device_id not in rollout.eligible:
                return
            rollout.eligible = [d for d in rollout.eligible if d != device_id]
            for wave in rollout.waves:
                wave.devices = [d for d in wave.devices if d != device_id]
            rollout.installs.pop(device_id, None)
            rollout.install_errors.pop(device_id, None)
            rollout.previous.pop(device_id, None)
            await self._save(rollout)

        for rollout in list(self._rollouts.values()):
            if rollout.model_name == model and not rollout.state.finished:
                await self._change(rollout.rollout_id, change)

    # signals from agents
    async def install_reported(
        self, device_id: str, model: str, version: str, error: str, bundle_sha256: str = ""
    ) -> None:
        async def change(rollout: RolloutRecord) -> None:
            if rollout.installs.get(device_id) != DeviceInstall.PENDING:
                return
            if error:
                rollout.installs[device_id] = DeviceInstall.FAILED
                rollout.install_errors[device_id] = error
            else:
                rollout.installs[device_id] = DeviceInstall.INSTALLED
            await self._save(rollout)

        for rollout in self._active(model, version):
            if bundle_sha256 and bundle_sha256 != rollout.spec.bundle_sha256:
                continue  # another bundle under the same version number: not this rollout's
            if rollout.installs.get(device_id) == DeviceInstall.PENDING:
                await self._change(rollout.rollout_id, change)

    def active_version_seen(self, device_id: str, model: str, version: str) -> None:
        """Telemetry showing the new version active counts as installed (the result message may
        have been lost in a disconnect or a controller restart). The driver checks live
        telemetry itself; a replica that does not drive the rollout records the install."""
        for rollout in self._active(model, version):
            if rollout.installs.get(device_id) != DeviceInstall.PENDING:
                continue
            if rollout.rollout_id in self._tokens:
                self._wake[rollout.rollout_id].set()
                continue
            key = (rollout.rollout_id, device_id)
            if key in self._confirming:
                continue
            self._confirming.add(key)
            task = asyncio.create_task(self._confirm(key, model, version))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    async def _confirm(self, key: tuple[str, str], model: str, version: str) -> None:
        try:
            await self.install_reported(key[1], model, version, "")
        except Exception:
            logger.exception("recording the install of %s on %s failed", model, key[1])
        finally:
            self._confirming.discard(key)

    def _active(self, model: str, version: str) -> list[RolloutRecord]:
        return [
            rollout
            for rollout in self._rollouts.values()
            if rollout.model_name == model
            and rollout.version == version
            and not rollout.state.finished
        ]

    # the driver
    async def _wait(self, rollout_id: str, seconds: float) -> None:
        event = self._wake[rollout_id]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(seconds, 0))
        event.clear()

    async def _drive(self, rollout_id: str) -> None:
        rollout = self._rollouts[rollout_id]
        if rollout.state == RolloutState.INSTALLING:
            # Taking over (or restarting): the wave's devices hear of it again, wherever they
            # are connected, in case the previous driver died before telling them.
            wave = rollout.waves[rollout.current_wave]
            pending = DeviceInstall.PENDING
            self._notify([d for d in wave.devices if rollout.installs.get(d) == pending])
        while True:
            rollout = self._rollouts[rollout_id]
            if rollout.state.finished:
                # Nothing left to drive: hand the lease back now.
                if self._tokens.pop(rollout_id, None) is not None:
                    await self._leases.release_lease(lease_name(rollout_id), self.replica)
                return
            if rollout.state == RolloutState.PAUSED:
                await self._wait(rollout_id, 3600)
            elif rollout.state == RolloutState.INSTALLING:
                await self._install_wave(rollout)
            else:
                await self._bake_wave(rollout)

    def _cohort(self, rollout: RolloutRecord, through_wave: int) -> list[str]:
        return [
            device_id for wave in rollout.waves[: through_wave + 1] for device_id in wave.devices
        ]

    def _sync_installs_from_telemetry(self, rollout: RolloutRecord) -> bool:
        changed = False
        for device_id, status in rollout.installs.items():
            if status != DeviceInstall.PENDING:
                continue
            sample = self._live.latest(device_id)
            model = sample.record.model(rollout.model_name) if sample else None
            if model is not None and model.version == rollout.version:
                rollout.installs[device_id] = DeviceInstall.INSTALLED
                changed = True
        return changed

    async def _install_wave(self, rollout: RolloutRecord) -> None:
        index = rollout.current_wave
        wave = rollout.waves[index]
        if not wave.devices:
            async with self._lock:
                if rollout.state != RolloutState.INSTALLING or rollout.current_wave != index:
                    return
                count = max(1, math.ceil(len(rollout.eligible) * wave.percent / 100))
                earlier = set(self._cohort(rollout, index - 1)) if index else set()
                wave.devices = [d for d in rollout.eligible[:count] if d not in earlier]
                for device_id in wave.devices:
                    rollout.installs[device_id] = DeviceInstall.PENDING
                desired = [
                    DesiredEntry(
                        device_id=device_id,
                        model=rollout.model_name,
                        version=rollout.version,
                        bundle_sha256=rollout.spec.bundle_sha256,
                        bundle_size=rollout.bundle_size,
                        source=f"rollout:{rollout.rollout_id}",
                    )
                    for device_id in wave.devices
                ]
                await self._save(rollout, desired, driver=True)
                await self._decided(
                    rollout,
                    "rollout.wave-started",
                    wave=index,
                    percent=wave.percent,
                    devices=len(wave.devices),
                )
            self._notify(wave.devices)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + rollout.spec.install_timeout_s
        while rollout.state == RolloutState.INSTALLING and rollout.current_wave == index:
            if self._sync_installs_from_telemetry(rollout):
                async with self._lock:
                    await self._save(rollout, driver=True)
            pending = [d for d in wave.devices if rollout.installs[d] == DeviceInstall.PENDING]
            if not pending:
                break
            left = deadline - loop.time()
            if left <= 0:
                async with self._lock:
                    for device_id in pending:
                        rollout.installs[device_id] = DeviceInstall.TIMED_OUT
                    await self._save(rollout, driver=True)
                break
            await self._wait(rollout.rollout_id, min(left, self._tick_s))
        async with self._lock:
            if rollout.state != RolloutState.INSTALLING or rollout.current_wave != index:
                return
            total = max(len(wave.devices), 1)
            failed = [d for d in wave.devices if rollout.installs[d] == DeviceInstall.FAILED]
            timed_out = [d for d in wave.devices if rollout.installs[d] == DeviceInstall.TIMED_OUT]
            if len(failed) / total > rollout.spec.max_install_failure_rate:
                reasons = "; ".join(f"{d}: {rollout.install_errors.get(d, '')}" for d in failed)
                wave.verdict = Verdict.FAIL
                wave.reason = f"{len(failed)}/{total} devices failed to install ({reasons})"
                await self._decided(
                    rollout, "rollout.verdict", wave=index, verdict="FAIL", reason=wave.reason
                )
                await self._roll_back(rollout, wave.reason, automatic=True)
            elif len(timed_out) / total > rollout.spec.max_timeout_rate:
                wave.verdict = Verdict.FAIL
                wave.reason = f"{len(timed_out)}/{total} devices did not install in time"
                await self._decided(
                    rollout, "rollout.verdict", wave=index, verdict="FAIL", reason=wave.reason
                )
                await self._roll_back(rollout, wave.reason, automatic=True)
            else:
                rollout.state = RolloutState.BAKING
                await self._save(rollout, driver=True)

    async def _remote_samples(
        self, devices: Iterable[str], since: float
    ) -> dict[str, list[TelemetrySample]]:
        """Samples since `since` (loop time) of devices connected to another replica: from the
        store, where that replica flushes them."""
        loop_now = asyncio.get_running_loop().time()
        wall_since = time.time() - (loop_now - since)
        found: dict[str, list[TelemetrySample]] = {}
        for device_id in devices:
            if self._live.online(device_id) or self._live.samples_since(device_id, since):
                continue
            rows = await self._store.telemetry(device_id, wall_since, 10_000)
            samples = []
            for received_at, document in rows:
                try:
                    record = TelemetryRecord.model_validate_json(document)
                except ValueError:
                    continue
                if not record.replayed:
                    samples.append(TelemetrySample(since + (received_at - wall_since), record))
            if samples:
                found[device_id] = samples
        return found

    def _windows(
        self,
        rollout: RolloutRecord,
        devices: Iterable[str],
        since: float,
        new_version: bool,
        remote: dict[str, list[TelemetrySample]] | None = None,
    ) -> list[DeviceWindow]:
        windows = []
        for device_id in devices:
            local = self._live.samples_since(device_id, since)
            samples = [
                (sample, model)
                for sample in (local or (remote or {}).get(device_id, []))
                if (model := sample.record.model(rollout.model_name)) is not None
                and (model.version == rollout.version) == new_version
            ]
            if len(samples) < 2:
                continue
            first, last = samples[0][1], samples[-1][1]
            requests = _counter_delta(first.requests, last.requests)
            if requests < rollout.spec.min_requests:
                continue
            # fps is the request rate over the window, from the counters. Latencies are the
            # median sample's, among samples whose version had served --min-requests by then:
            # the first samples after a version loads rest on a handful of requests (their p95
            # is their slowest one), and a mean of them let two slow requests during another
            # node's model load fail an identical model (the flaky `make fleet-demo`).
            elapsed = max(samples[-1][0].at - samples[0][0].at, 1e-3)
            settled = [m for _, m in samples if m.requests >= rollout.spec.min_requests]
            if not settled:
                continue
            figures = dataclasses.replace(
                last,
                requests=requests,
                errors=_counter_delta(first.errors, last.errors),
                drops=_counter_delta(first.drops, last.drops),
                fps=requests / elapsed,
                latency_p50_ms=statistics.median(m.latency_p50_ms for m in settled),
                latency_p95_ms=statistics.median(m.latency_p95_ms for m in settled),
            )
            windows.append(DeviceWindow(device_id, figures))
        return windows

    async def _bake_wave(self, rollout: RolloutRecord) -> None:
        index = rollout.current_wave
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + rollout.spec.bake_s
        while rollout.state == RolloutState.BAKING and rollout.current_wave == index:
            left = deadline - loop.time()
            if left <= 0:
                break
            await self._wait(rollout.rollout_id, left)
        remote = await self._remote_samples(rollout.eligible, started)
        async with self._lock:
            if rollout.state != RolloutState.BAKING or rollout.current_wave != index:
                return
            cohort = set(self._cohort(rollout, index))
            canary_ids = [d for d in cohort if rollout.installs[d] == DeviceInstall.INSTALLED]
            baseline_ids = [d for d in rollout.eligible if d not in cohort]
            canary = self._windows(rollout, canary_ids, started, True, remote)
            baseline = self._windows(rollout, baseline_ids, started, False, remote)
            gates = [parse_gate(text) for text in rollout.spec.gates]
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
            )
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
                succeeded = self._advance(rollout)
                await self._save(rollout, driver=True, measurements=measurements, audit=[record])
            elif verdict == Verdict.FAIL:
                rolled_back = f"wave {index} failed its gates: {wave.reason}"
                await self._roll_back(
                    rollout, rolled_back, automatic=True, decided=False,
                    measurements=measurements, audit=[record],
                )  # fmt: skip
            else:
                rollout.state = RolloutState.PAUSED
                rollout.reason = f"wave {index} inconclusive: {wave.reason or 'no gate data'}"
                await self._save(rollout, driver=True, measurements=measurements, audit=[record])
            await self._decided(rollout, "rollout.verdict", audited=True, **judged)
            if rolled_back:
                await self._decided(
                    rollout,
                    "rollout.rolled-back",
                    reason=rolled_back,
                    devices=len(rollout.installs),
                    automatic=True,
                )
            elif verdict == Verdict.PASS:
                if succeeded:
                    await self._decided(rollout, "rollout.succeeded")
            else:
                await self._decided(rollout, "rollout.paused", wave=index, reason=rollout.reason)

    # transitions (caller holds the lock)
    def _advance(self, rollout: RolloutRecord) -> bool:
        """Move on to the next wave; True when that was the last one (the rollout succeeded)."""
        if rollout.current_wave + 1 >= len(rollout.waves):
            rollout.state = RolloutState.SUCCEEDED
            rollout.reason = "every wave passed"
            return True
        rollout.current_wave += 1
        rollout.state = RolloutState.INSTALLING
        rollout.reason = ""
        return False

    async def _decided(
        self, rollout: RolloutRecord, action: str, audited: bool = False, **detail: object
    ) -> None:
        """What the controller decided on its own: in its log, its audit log (unless `audited`
        in the write that committed it), its metrics and (once committed) its webhooks."""
        key = action + (f":{detail['verdict']}" if "verdict" in detail else "")
        self.decisions[key] = self.decisions.get(key, 0) + 1
        verdict = detail.get("verdict")
        bad = action in ("rollout.paused", "rollout.rolled-back") or verdict not in (
            None,
            Verdict.PASS.value,
        )
        logger.log(
            logging.WARNING if bad else logging.INFO,
            "rollout %s (%s %s): %s %s",
            rollout.rollout_id, rollout.model_name, rollout.version, action, detail,
        )  # fmt: skip
        record = AuditRecord(
            at=time.time(),
            actor="controller",
            action=action,
            detail={"rollout": rollout.rollout_id, **detail},
        )
        if not audited:
            await self._store.add_audit(record)
        if self._on_decision is not None:
            self._on_decision(rollout, action, detail)

    async def _roll_back(
        self,
        rollout: RolloutRecord,
        reason: str,
        automatic: bool = False,
        decided: bool = True,
        measurements: Sequence[Measurement] = (),
        audit: Sequence[AuditRecord] = (),
    ) -> None:
        """Roll back: an operator's (any replica) or the driver's own (`automatic`: fenced)."""
        touched = list(rollout.installs)
        desired: list[DesiredEntry] = []
        undesired: list[tuple[str, str]] = []
        for device_id in touched:
            previous = rollout.previous.get(device_id)
            if previous is None:
                undesired.append((device_id, rollout.model_name))
                continue
            desired.append(
                DesiredEntry(
                    device_id=device_id,
                    model=rollout.model_name,
                    version=previous.version,
                    bundle_sha256=previous.bundle_sha256,
                    bundle_size=previous.bundle_size,
                    source=f"rollback:{rollout.rollout_id}",
                    rejected_versions=[rollout.version],
                )
            )
        rollout.state = RolloutState.ROLLED_BACK
        rollout.reason = reason
        await self._save(
            rollout, desired, undesired, driver=automatic, measurements=measurements, audit=audit
        )
        self._notify(touched)
        if automatic and decided:
            await self._decided(
                rollout, "rollout.rolled-back", reason=reason, devices=len(touched), automatic=True
            )
        elif not automatic and self._on_decision is not None:
            # The operator's rollback is audited as the operator's action; receivers hear of it.
            self._on_decision(
                rollout, "rollout.rolled-back", {"reason": reason, "devices": len(touched),
                                                 "automatic": False},
            )  # fmt: skip

    async def _save(
        self,
        rollout: RolloutRecord,
        desired: Sequence[DesiredEntry] = (),
        undesired: Sequence[tuple[str, str]] = (),
        *,
        driver: bool = False,
        measurements: Sequence[Measurement] = (),
        audit: Sequence[AuditRecord] = (),
    ) -> None:
        """Commit the decision made on `rollout`. Until the store accepts it nothing else sees
        it. The write compares and sets the revision this copy was read at, and the driver's
        writes carry the lease's fencing token. If the write fails, the record goes back to the
        store's copy (another replica changed it: StaleRevision) or to the last committed copy,
        and the error propagates (the supervisor retries the driver from there)."""
        rollout_id = rollout.rollout_id
        fence = None
        if driver:
            token = self._tokens.get(rollout_id)
            if token is None:
                raise LeaseLost(f"rollout {rollout_id} is not driven by {self.replica}")
            fence = Fence(lease_name(rollout_id), self.replica, token)
        committed = self._committed.get(rollout_id)
        rollout.updated_at = time.time()
        snapshot = rollout.model_copy(deep=True)
        snapshot.revision = (committed.revision if committed else rollout.revision) + 1
        try:
            await self._store.save_rollout(
                snapshot,
                desired,
                undesired,
                expected_revision=committed.revision if committed else None,
                fence=fence,
                measurements=measurements,
                audit=audit,
            )
        except (StaleRevision, LeaseLost):
            fresh = await self._store.get_rollout(rollout_id)
            if fresh is not None:
                self._install(fresh)
            raise
        except BaseException:
            if committed is not None:
                _replace(rollout, committed)
            raise
        rollout.revision = snapshot.revision
        self._committed[rollout_id] = snapshot
        self._announce("rollout", [rollout_id], snapshot.revision)
