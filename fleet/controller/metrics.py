"""Prometheus view of the fleet, labelled by device and model version, read at scrape time.

Fleet-wide figures (rollouts by state, devices by state and by version, and every per-device
figure: online, cpu, memory, fps, latency, counters) are the same on every replica of a shared
fleet: presence comes from the replicas' notes and roll call, the latest telemetry of a device
connected elsewhere from the store (fleet/controller/replication/inbound.py), a telemetry flush
and a poll late. A dashboard takes their `max` across replicas (or scrapes one), not their sum.
Figures of what one replica does (verdicts it judged, rollouts it drives, takeovers) are its
own: sum them. Labels are bounded: states, verdicts, models and versions, never rollout ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fleet.controller.devices import DeviceRegistry
    from fleet.controller.live import LiveFleet
    from fleet.controller.replication.replica import Replica
    from fleet.controller.rollouts.engine import RolloutEngine
    from fleet.controller.telemetry import TelemetryService


class FleetCollector(Collector):
    def __init__(
        self,
        devices: DeviceRegistry,
        live: LiveFleet,
        telemetry: TelemetryService,
        rollouts: RolloutEngine,
        replica: Replica | None = None,
    ) -> None:
        self._devices = devices
        self._live = live
        self._telemetry = telemetry
        self._rollouts = rollouts
        self._replica = replica

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
        drift = CounterMetricFamily(
            "edgefleet_device_drift_corrections",
            "Times the device's agent put a model that drifted from its desired version back",
            labels=["device"],
        )
        for device in self._devices.records():
            device_id = device.device_id
            # Connected to any replica: the same figure on every replica (devices.py).
            online.add_metric([device_id], 1.0 if self._devices.online(device_id) else 0.0)
            sample = live.latest(device_id)
            if sample is None:
                continue
            record = sample.record
            cpu.add_metric([device_id], record.cpu_percent)
            memory.add_metric([device_id], record.memory_used_bytes)
            drift.add_metric([device_id], record.drift_corrections)
            if record.temperature_c is not None:
                temperature.add_metric([device_id], record.temperature_c)
            for model in record.models:
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
        restarts.add_metric([], self._rollouts.leadership.driver_failures)
        pending = GaugeMetricFamily(
            "edgefleet_controller_telemetry_rows_pending",
            "Telemetry rows received and not yet written to the store",
        )
        pending.add_metric([], self._telemetry.rows_pending)
        yield from (online, cpu, memory, temperature, fps, p50, p95, requests, errors, drops, drift)
        decisions = CounterMetricFamily(
            "edgefleet_controller_rollout_decisions",
            "Decisions the controller took on its own: gate verdicts, automatic rollbacks",
            labels=["decision"],
        )
        for decision, count in sorted(self._rollouts.context.decisions.items()):
            decisions.add_metric([decision], count)
        yield from (dropped, restarts, pending, decisions)
        yield from self._fleet()
        yield from self._replica_figures()

    def _fleet(self) -> Iterator[Metric]:
        """Rollouts by state and wave, verdicts, devices by state and by version."""
        states = GaugeMetricFamily(
            "edgefleet_controller_rollouts", "Rollouts by state", labels=["state"]
        )
        by_state = Counter(
            rollout.state.value.lower() for rollout in self._rollouts.list_rollouts()
        )
        for state in ("installing", "baking", "paused", "succeeded", "rolled_back"):
            states.add_metric([state], by_state.get(state, 0))
        wave = GaugeMetricFamily(
            "edgefleet_controller_rollout_wave",
            "Current wave (from 0) of the model's unfinished rollout",
            labels=["model"],
        )
        waves = GaugeMetricFamily(
            "edgefleet_controller_rollout_waves",
            "Waves in the model's unfinished rollout",
            labels=["model"],
        )
        for rollout in self._rollouts.list_rollouts():
            if not rollout.state.finished:
                wave.add_metric([rollout.model_name], rollout.current_wave)
                waves.add_metric([rollout.model_name], len(rollout.waves))
        verdicts = CounterMetricFamily(
            "edgefleet_controller_wave_verdicts",
            "Gate verdicts this controller gave at the end of a wave's bake",
            labels=["verdict"],
        )
        for verdict in ("PASS", "FAIL", "INCONCLUSIVE"):
            count = self._rollouts.context.decisions.get(f"rollout.verdict:{verdict}", 0)
            verdicts.add_metric([verdict.lower()], count)
        devices = GaugeMetricFamily(
            "edgefleet_controller_devices",
            "Enrolled devices by state (online: connected to any replica)",
            labels=["state"],
        )
        versions = GaugeMetricFamily(
            "edgefleet_controller_devices_by_version",
            "Devices serving each model version",
            labels=["model", "version"],
        )
        online = 0
        serving: Counter[tuple[str, str]] = Counter()
        records = self._devices.records()
        for device in records:
            online += self._devices.online(device.device_id)
            serving.update(device.active_versions.items())
        devices.add_metric(["online"], online)
        devices.add_metric(["offline"], len(records) - online)
        for (model, version), count in sorted(serving.items()):
            versions.add_metric([model, version], count)
        yield from (states, wave, waves, verdicts, devices, versions)

    def _replica_figures(self) -> Iterator[Metric]:
        """What this replica does in a shared fleet: leases, takeovers, change notes."""
        leadership = self._rollouts.leadership
        driven = GaugeMetricFamily(
            "edgefleet_controller_rollouts_driven",
            "Rollouts this replica drives (holds the lease of)",
        )
        driven.add_metric([], len(leadership.driven()))
        takeovers = CounterMetricFamily(
            "edgefleet_controller_rollout_takeovers",
            "Rollout leases this replica took with a new fencing token (a takeover)",
        )
        takeovers.add_metric([], leadership.takeovers)
        lost = CounterMetricFamily(
            "edgefleet_controller_rollout_leases_lost",
            "Rollout leases this replica lost (expired while it was away, a refused write)",
        )
        lost.add_metric([], leadership.leases_lost)
        notes = CounterMetricFamily(
            "edgefleet_controller_change_notes_dropped",
            "Change notes to other replicas dropped (the store away, the queue full)",
        )
        announcer = self._replica.announcer if self._replica is not None else None
        notes.add_metric([], announcer.dropped if announcer is not None else 0)
        yield from (driven, takeovers, lost, notes)
