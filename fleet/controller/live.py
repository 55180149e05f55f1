"""The controller's live view of the fleet: who is connected, and recent telemetry per device.

In memory only, bounded per device; the durable copy of telemetry is in the store. Times are
`loop.time()` so bake windows never jump with the wall clock.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fleet.agent.serving import ModelTelemetry


@dataclass(frozen=True)
class TelemetrySample:
    # loop.time() when the controller received it.
    at: float
    received_wall: float
    cpu_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    gpu_utilization_percent: float
    gpu_memory_used_bytes: int
    dropped_samples: int
    models: tuple[ModelTelemetry, ...]
    # Sent late from the agent's buffer: describes an earlier time, so bake windows skip it.
    replayed: bool = False

    def model(self, name: str) -> ModelTelemetry | None:
        return next((model for model in self.models if model.name == name), None)


def sample_from_document(document: str, at: float) -> TelemetrySample:
    """A sample back from its stored JSON document (`convert.telemetry_from_pb` writes it), for
    devices whose telemetry reached another replica. `at` is its time on this loop's clock."""
    doc = json.loads(document)

    def number(key: str) -> float:
        value = doc.get(key)
        return math.nan if value is None else float(value)

    return TelemetrySample(
        at=at,
        received_wall=float(doc["received_at"]),
        cpu_percent=number("cpu_percent"),
        memory_used_bytes=int(doc.get("memory_used_bytes") or 0),
        memory_total_bytes=int(doc.get("memory_total_bytes") or 0),
        temperature_c=number("temperature_c"),
        gpu_utilization_percent=number("gpu_utilization_percent"),
        gpu_memory_used_bytes=int(doc.get("gpu_memory_used_bytes") or 0),
        dropped_samples=int(doc.get("dropped_samples") or 0),
        models=tuple(
            ModelTelemetry(
                name=str(model["name"]),
                version=str(model["version"]),
                requests=int(model["requests"]),
                errors=int(model["errors"]),
                drops=int(model["drops"]),
                fps=float(model["fps"]),
                latency_p50_ms=float(model["latency_p50_ms"]),
                latency_p95_ms=float(model["latency_p95_ms"]),
            )
            for model in doc.get("models", [])
        ),
        replayed=bool(doc.get("replayed", False)),
    )


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
        on_presence: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._samples_per_device = samples_per_device
        # A connected device that sent nothing for this long is offline (hung, SIGSTOPped, cut
        # off behind a NAT that keeps the TCP session), whatever its stream looks like.
        self._offline_after_s = offline_after_s
        # Told (device, online) when a device's first stream opens or its last one closes.
        self._on_presence = on_presence
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
        if previous is None and self._on_presence is not None:
            self._on_presence(device_id, True)
        return session

    def detach(self, session: DeviceSession) -> None:
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]
            if self._on_presence is not None:
                self._on_presence(session.device_id, False)

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

    def notify(self, device_ids: Iterable[str]) -> None:
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
        self._last_seen[device_id] = sample.received_wall
        self._heard[device_id] = time.monotonic()

    def latest(self, device_id: str) -> TelemetrySample | None:
        history = self._history.get(device_id)
        return history[-1] if history else None

    def devices_with_telemetry(self) -> list[str]:
        return list(self._history)

    def samples_since(self, device_id: str, since: float) -> list[TelemetrySample]:
        history = self._history.get(device_id, ())
        return [sample for sample in history if sample.at >= since and not sample.replayed]
