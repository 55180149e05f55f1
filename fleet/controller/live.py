"""The controller's live view of the fleet: who is connected, and recent telemetry per device.

In memory only, bounded per device; the durable copy of telemetry is in the store. Times are
`loop.time()` so bake windows never jump with the wall clock.

Replicas: the samples of devices connected to another replica are followed from the store
(`record_remote`, fleet/controller/replication/inbound.py) and kept apart from this replica's
own, so every replica shows the same latest figures and charts while the bake windows of the
devices connected here stay this replica's own measurements (windows.py reads the others' from
the store).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from common.telemetry import TelemetryRecord


@dataclass(frozen=True)
class TelemetrySample:
    """A device's telemetry record as the live view holds it."""

    # loop.time() when the controller received it.
    at: float
    record: TelemetryRecord


@dataclass
class DeviceSession:
    """One connected agent stream. `desired_changed` wakes its sender."""

    device_id: str
    desired_changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class LiveFleet:
    def __init__(
        self,
        samples_per_device: int,
        offline_after_s: float = math.inf,
        announce: Callable[[str, Sequence[str]], None] | None = None,
        remote_delay_s: float = 0.0,
    ) -> None:
        self._samples_per_device = samples_per_device
        # How late the store shows another replica's telemetry (its flush, then our poll).
        self._remote_delay_s = remote_delay_s
        # A connected device that sent nothing for this long is offline (hung, SIGSTOPped, cut
        # off behind a NAT that keeps the TCP session), whatever its stream looks like.
        self._offline_after_s = offline_after_s
        # Tells the other replicas (fleet.controller.replication): "online" when a device's first
        # stream opens here, "offline" when its last one closes, "desired" from `wake`, "phase"
        # from `install_progress`.
        self._announce = announce or (lambda kind, device_ids: None)
        self._sessions: dict[str, DeviceSession] = {}
        self._history: dict[str, deque[TelemetrySample]] = {}
        # Devices connected to another replica: their samples as the store has them.
        self._remote: dict[str, deque[TelemetrySample]] = {}
        self._last_seen: dict[str, float] = {}
        # time.monotonic() of the last message from each device.
        self._heard: dict[str, float] = {}
        # (device, model) -> (version, phase): where an install stands, as its agent said
        # (downloading, verifying, installing, smoke test), here or on another replica.
        self._phases: dict[tuple[str, str], tuple[str, str]] = {}

    def attach(self, device_id: str) -> DeviceSession:
        """Register a new stream; an older stream of the same device is told to close."""
        previous = self._sessions.get(device_id)
        if previous is not None:
            previous.closed.set()
        session = DeviceSession(device_id)
        self._sessions[device_id] = session
        if previous is None:
            self._announce("online", [device_id])
        return session

    def detach(self, session: DeviceSession) -> None:
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]
            self._announce("offline", [session.device_id])

    def sessions(self) -> list[str]:
        return list(self._sessions)

    def disconnect(self, device_id: str) -> None:
        """Tell the device's open stream, if any, to close."""
        session = self._sessions.get(device_id)
        if session is not None:
            session.closed.set()

    def connected(self, device_id: str) -> bool:
        """A stream of the device is open here (heard lately or not)."""
        return device_id in self._sessions

    def heard_lately(self, device_id: str, stored_last_seen: float = 0.0) -> bool:
        """A device connected to another replica: heard (wall clock, as that replica stored
        it) within the offline window plus the store's delay. The same rule as `online`."""
        return self.fresh(max(self._last_seen.get(device_id, 0.0), stored_last_seen))

    def fresh(self, heard_at: float) -> bool:
        """Whether a device heard at `heard_at` (wall clock, by another replica) still counts as
        online: within the offline window plus the store's delay."""
        return time.time() - heard_at <= self._offline_after_s + self._remote_delay_s

    def local_heard(self, device_id: str) -> float:
        """When (wall clock) this replica last received telemetry from the device; 0 if never."""
        history = self._history.get(device_id)
        return history[-1].record.received_at if history else 0.0

    def remote_heard(self, device_id: str) -> float:
        """When (wall clock) another replica last received telemetry from the device, as the
        store shows it; 0 if never."""
        history = self._remote.get(device_id)
        return history[-1].record.received_at if history else 0.0

    def online(self, device_id: str) -> bool:
        if device_id not in self._sessions:
            return False
        heard = self._heard.get(device_id)
        return heard is not None and time.monotonic() - heard <= self._offline_after_s

    def online_count(self) -> int:
        return sum(self.online(device_id) for device_id in self._sessions)

    def wake(self, device_ids: Iterable[str]) -> None:
        """Their desired state changed: their streams resend it, here and on every replica."""
        ids = list(device_ids)
        self.notify(ids)
        self._announce("desired", ids)

    def notify(self, device_ids: Iterable[str]) -> None:
        """Wake the streams of these devices that are connected here."""
        for device_id in device_ids:
            session = self._sessions.get(device_id)
            if session is not None:
                session.desired_changed.set()

    def touch(self, device_id: str, wall: float) -> None:
        self._last_seen[device_id] = wall
        self._heard[device_id] = time.monotonic()

    def last_seen(self, device_id: str) -> float | None:
        return self._last_seen.get(device_id)

    def record(self, device_id: str, sample: TelemetrySample) -> None:
        history = self._history.get(device_id)
        if history is None:
            history = self._history[device_id] = deque(maxlen=self._samples_per_device)
        history.append(sample)
        self._last_seen[device_id] = sample.record.received_at
        self._heard[device_id] = time.monotonic()

    def install_progress(
        self, device_id: str, model: str, version: str, phase: str, announce: bool = True
    ) -> None:
        """An agent's install moved on (told here, or by another replica: `announce` False)."""
        self._phases[(device_id, model)] = (version, phase)
        if announce:
            self._announce("phase", ["\t".join((device_id, model, version, phase))])

    def install_phase(self, device_id: str, model: str, version: str) -> str:
        """The last phase the device reported for installing `version` of `model`, or ""."""
        known = self._phases.get((device_id, model))
        return known[1] if known is not None and known[0] == version else ""

    def record_remote(self, device_id: str, sample: TelemetrySample) -> None:
        """A sample another replica received (read from the store)."""
        history = self._remote.get(device_id)
        if history is None:
            history = self._remote[device_id] = deque(maxlen=self._samples_per_device)
        history.append(sample)
        received = sample.record.received_at
        self._last_seen[device_id] = max(self._last_seen.get(device_id, 0.0), received)

    def latest(self, device_id: str) -> TelemetrySample | None:
        """The newest sample, received here or (read from the store) by another replica."""
        here, there = self._history.get(device_id), self._remote.get(device_id)
        newest = [history[-1] for history in (here, there) if history]
        return max(newest, key=lambda sample: sample.record.received_at, default=None)

    def recent(self, device_id: str, since: float) -> list[TelemetrySample]:
        """Samples since `since` from wherever the device was connected (charts)."""
        samples = self.samples_since(device_id, since) + [
            sample
            for sample in self._remote.get(device_id, ())
            if sample.at >= since and not sample.record.replayed
        ]
        return sorted(samples, key=lambda sample: sample.record.received_at)

    def devices_with_telemetry(self) -> list[str]:
        return list(self._history)

    def samples_since(self, device_id: str, since: float) -> list[TelemetrySample]:
        history = self._history.get(device_id, ())
        return [sample for sample in history if sample.at >= since and not sample.record.replayed]
