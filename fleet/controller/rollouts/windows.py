"""Measuring a bake: each device's figures over the window, for one model version, from the live
view for devices connected here and from the store for devices connected to another replica
(which flushes their telemetry every `telemetry_flush_s`). Judging them is gates.py's part."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import statistics
import time
from collections.abc import Iterable

from common.telemetry import TelemetryRecord
from fleet.controller.live import LiveFleet, TelemetrySample
from fleet.controller.rollouts.gates import DeviceWindow
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import RolloutRecord
from fleet.controller.store.runner import StoreRunner


def counter_delta(before: int, after: int) -> int:
    """Growth of a cumulative counter; a smaller value means it restarted (model reloaded)."""
    return after - before if after >= before else after


def _median_of_measured(values: Iterable[float]) -> float:
    """The median of the figures that were measured; NaN (no data) when none was."""
    measured = [value for value in values if not math.isnan(value)]
    return statistics.median(measured) if measured else math.nan


async def remote_samples(
    store: StoreRunner, live: LiveFleet, devices: Iterable[str], since: float
) -> dict[str, list[TelemetrySample]]:
    """Samples since `since` (loop time) of devices connected to another replica: from the
    store, where that replica flushes them."""
    loop_now = asyncio.get_running_loop().time()
    wall_since = time.time() - (loop_now - since)
    found: dict[str, list[TelemetrySample]] = {}
    for device_id in devices:
        if live.online(device_id) or live.samples_since(device_id, since):
            continue
        rows = await store.run(Store.telemetry, device_id, wall_since, 10_000)
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


def device_windows(
    live: LiveFleet,
    rollout: RolloutRecord,
    devices: Iterable[str],
    since: float,
    new_version: bool,
    remote: dict[str, list[TelemetrySample]] | None = None,
) -> list[DeviceWindow]:
    """The window of each device that served the rollout's model (on the new version, or on
    any other) for at least --min-requests since `since`."""
    windows = []
    for device_id in devices:
        local = live.samples_since(device_id, since)
        samples = [
            (sample, model)
            for sample in (local or (remote or {}).get(device_id, []))
            if (model := sample.record.model(rollout.model_name)) is not None
            and (model.version == rollout.version) == new_version
        ]
        if len(samples) < 2:
            continue
        first, last = samples[0][1], samples[-1][1]
        requests = counter_delta(first.requests, last.requests)
        if requests < rollout.spec.min_requests:
            continue
        # fps is the rate of successful requests over the window, from the counters: a failed
        # request is no frame served. Latencies are the median sample's, among samples whose
        # version had served --min-requests by then: the first samples after a version loads
        # rest on a handful of requests (their p95 is their slowest one), and a mean of them
        # let two slow requests during another node's model load fail an identical model (the
        # flaky `make fleet-demo`). Samples without a success have no latency (NaN): without
        # any, the device's latency is NaN, "no data", which no gate passes (gates.py).
        elapsed = max(samples[-1][0].at - samples[0][0].at, 1e-3)
        settled = [m for _, m in samples if m.requests >= rollout.spec.min_requests]
        if not settled:
            continue
        errors = counter_delta(first.errors, last.errors)
        figures = dataclasses.replace(
            last,
            requests=requests,
            errors=errors,
            drops=counter_delta(first.drops, last.drops),
            fps=max(requests - errors, 0) / elapsed,
            latency_p50_ms=_median_of_measured(m.latency_p50_ms for m in settled),
            latency_p95_ms=_median_of_measured(m.latency_p95_ms for m in settled),
        )
        windows.append(DeviceWindow(device_id, figures))
    return windows
