"""The controller's live view of the fleet: who is connected, and recent telemetry per device.

In memory only, bounded per device; the durable copy of telemetry is in the store. Times are
`loop.time()` so bake windows never jump with the wall clock.
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
    ) -> None:
        self._samples_per_device = samples_per_device
        # A connected device that sent nothing for this long is offline (hung, SIGSTOPped, cut
        # off behind a NAT that keeps the TCP session), whatever its stream looks like.
        self._offline_after_s = offline_after_s
        # Tells the other replicas (fleet.controller.replication): "online" when a device's first
        # stream opens here, "offline" when its last one closes, "desired" from `wake`.
        self._announce = announce or (lambda kind, device_ids: None)
        self._sessions: dict[str, DeviceSession] = {}
        self._history: dict[str, deque[TelemetrySample]] = {}
        self._last_seen: dict[str, float] = {}
        # time.monotonic() of the last message from each device.
        self._heard: dict[str, float] = {}

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

    def latest(self, device_id: str) -> TelemetrySample | None:
        history = self._history.get(device_id)
        return history[-1] if history else None

    def devices_with_telemetry(self) -> list[str]:
        return list(self._history)

    def samples_since(self, device_id: str, since: float) -> list[TelemetrySample]:
        history = self._history.get(device_id, ())
        return [sample for sample in history if sample.at >= since and not sample.record.replayed]
