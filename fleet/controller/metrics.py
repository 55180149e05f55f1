"""Prometheus view of the fleet, labelled by device and model version, read at scrape time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fleet.controller.devices import DeviceRegistry
    from fleet.controller.live import LiveFleet
    from fleet.controller.rollouts import RolloutEngine
    from fleet.controller.telemetry import TelemetryService


class FleetCollector(Collector):
    def __init__(
        self,
        devices: DeviceRegistry,
        live: LiveFleet,
        telemetry: TelemetryService,
        rollouts: RolloutEngine,
    ) -> None:
        self._devices = devices
        self._live = live
        self._telemetry = telemetry
        self._rollouts = rollouts

    def collect(self) -> Iterator[Metric]:
        live = self._live
        online = GaugeMetricFamily(
            "edgefleet_device_online", "1 while the device's agent is connected", labels=["device"]
        )
        cpu = GaugeMetricFamily("edgefleet_device_cpu_percent", "Device CPU use", labels=["device"])
        memory = GaugeMetricFamily(
            "edgefleet_device_memory_used_bytes", "Device memory in use", labels=["device"]
        )
        temperature = GaugeMetricFamily(
            "edgefleet_device_temperature_celsius", "Device temperature", labels=["device"]
        )
        model_labels = ["device", "model", "version"]
        fps = GaugeMetricFamily("edgefleet_model_fps", "Frames per second", labels=model_labels)
        p50 = GaugeMetricFamily(
            "edgefleet_model_latency_p50_seconds", "Median latency", labels=model_labels
        )
        p95 = GaugeMetricFamily(
            "edgefleet_model_latency_p95_seconds", "95th percentile latency", labels=model_labels
        )
        # Counts since the model loaded on the device: counters (a reload is a counter reset).
        requests = CounterMetricFamily(
            "edgefleet_model_requests", "Requests since the model loaded", labels=model_labels
        )
        errors = CounterMetricFamily(
            "edgefleet_model_errors", "Errors since the model loaded", labels=model_labels
        )
        drops = CounterMetricFamily(
            "edgefleet_model_drops", "Dropped frames since the model loaded", labels=model_labels
        )
        for device in self._devices.records():
            device_id = device.device_id
            online.add_metric([device_id], 1.0 if live.online(device_id) else 0.0)
            sample = live.latest(device_id)
            if sample is None:
                continue
            cpu.add_metric([device_id], sample.cpu_percent)
            memory.add_metric([device_id], sample.memory_used_bytes)
            if not math.isnan(sample.temperature_c):
                temperature.add_metric([device_id], sample.temperature_c)
            for model in sample.models:
                labels = [device_id, model.name, model.version]
                fps.add_metric(labels, model.fps)
                p50.add_metric(labels, model.latency_p50_ms / 1000)
                p95.add_metric(labels, model.latency_p95_ms / 1000)
                requests.add_metric(labels, model.requests)
                errors.add_metric(labels, model.errors)
                drops.add_metric(labels, model.drops)
        dropped = CounterMetricFamily(
            "edgefleet_controller_telemetry_rows_dropped",
            "Telemetry rows dropped because the store fell behind",
        )
        dropped.add_metric([], self._telemetry.rows_dropped)
        restarts = CounterMetricFamily(
            "edgefleet_controller_rollout_driver_failures",
            "Rollout driver crashes (store errors, bugs); each was logged and retried",
        )
        restarts.add_metric([], self._rollouts.driver_failures)
        pending = GaugeMetricFamily(
            "edgefleet_controller_telemetry_rows_pending",
            "Telemetry rows received and not yet written to the store",
        )
        pending.add_metric([], self._telemetry.rows_pending)
        yield from (online, cpu, memory, temperature, fps, p50, p95, requests, errors, drops)
        decisions = CounterMetricFamily(
            "edgefleet_controller_rollout_decisions",
            "Decisions the controller took on its own: gate verdicts, automatic rollbacks",
            labels=["decision"],
        )
        for decision, count in sorted(self._rollouts.decisions.items()):
            decisions.add_metric([decision], count)
        yield from (dropped, restarts, pending, decisions)
