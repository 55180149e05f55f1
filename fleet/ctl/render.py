"""How fleetctl shows things to people: plain-text tables, and progress lines for logs. JSON for
scripts (`--output json`) is `fleet.ctl.output`."""

from __future__ import annotations

import math
import time

from common.text_table import TextTable, progress_bar
from protos.edgefleet.fleet.v1 import admin_pb2


def _verdict(value: int) -> str:
    name = admin_pb2.Verdict.Name(value).removeprefix("VERDICT_")
    return "" if name == "UNSPECIFIED" else name


def state_name(rollout: admin_pb2.Rollout) -> str:
    return admin_pb2.RolloutState.Name(rollout.state).removeprefix("ROLLOUT_STATE_")


def _ago(seconds: float) -> str:
    if seconds <= 0:
        return "never"
    delta = max(time.time() - seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} ago"
    return f"{delta:.0f}s ago"


def devices_table(devices: list[admin_pb2.Device]) -> TextTable:
    table = TextTable(
        "device", "labels", "online", "last seen", "model", "desired", "actual", "source",
        "drift", title="devices (desired vs actual)",
    )  # fmt: skip
    for device in devices:
        labels = ",".join(f"{k}={v}" for k, v in sorted(device.labels.items()))
        online = "yes" if device.online else "no"
        seen = _ago(device.last_seen.ToNanoseconds() / 1e9)
        if not device.models:
            table.add_row(device.device_id, labels, online, seen, "-", "-", "-", "-", "")
        for model in device.models:
            drift = model.desired_version and model.desired_version != model.actual_version
            mark = "DRIFT" if drift else "ok"
            if model.last_install_error:
                mark = f"error: {model.last_install_error[:40]}"
            table.add_row(
                device.device_id, labels, online, seen, model.name,
                model.desired_version or "-", model.actual_version or "-",
                model.desired_source or "-", mark,
            )  # fmt: skip
    return table


def top_table(devices: list[admin_pb2.Device]) -> TextTable:
    columns = ("device", "online", "cpu %", "mem MB", "temp C", "model", "version", "fps",
               "p50 ms", "p95 ms", "errors", "drops")  # fmt: skip
    table = TextTable(*columns, title=f"fleet top ({time.strftime('%H:%M:%S')})", right=columns)
    for device in devices:
        temperature = "-" if math.isnan(device.temperature_c) else f"{device.temperature_c:.0f}"
        base = [
            device.device_id,
            "yes" if device.online else "no",
            f"{device.cpu_percent:.0f}",
            f"{device.memory_used_bytes / 1e6:.0f}",
            temperature,
        ]
        if not device.models:
            table.add_row(*base, "-", "-", "", "", "", "", "")
        for model in device.models:
            table.add_row(
                *base,
                model.name,
                model.actual_version or "-",
                f"{model.fps:.1f}",
                f"{model.latency_p50_ms:.2f}",
                f"{model.latency_p95_ms:.2f}",
                str(model.errors),
                str(model.drops),
            )
    return table


def rollout_view(rollout: admin_pb2.Rollout) -> str:
    """Waves are numbered from 1 for people (the API's indexes count from 0)."""
    header = (
        f"rollout {rollout.rollout_id} {rollout.model_name} -> version {rollout.version}  "
        f"{state_name(rollout)}  {rollout.eligible_devices} eligible devices, "
        f"bake {rollout.bake_s:g}s"
    )
    table = TextTable(
        "wave", "%", "devices", "installed", "failed", "timed out", "progress", "verdict"
    )
    for wave in rollout.waves:
        total = max(wave.target_devices, 1)
        current = wave.index == rollout.current_wave and state_name(rollout) in (
            "INSTALLING",
            "BAKING",
            "PAUSED",
        )
        verdict = _verdict(wave.verdict)
        label = verdict or (state_name(rollout) if current else "")
        table.add_row(
            f"{wave.index + 1}{' *' if current else ''}",
            f"{wave.percent:g}",
            str(wave.target_devices),
            str(wave.installed),
            str(wave.failed),
            str(wave.timed_out),
            progress_bar(wave.installed, total),
            label,
        )
    # The waves indented under their rollout (and never read as a progress line, which
    # starts with the time).
    parts = [header, *("  " + line for line in table.render().splitlines())]
    if rollout.reason:
        parts.append(f"reason: {rollout.reason}")
    return "\n".join(parts)


def why_table(measurements: list[admin_pb2.GateMeasurement]) -> TextTable:
    table = TextTable(
        "wave", "gate", "canary", "baseline", "threshold", "devices (wave/base)", "verdict",
        "note", title="gate measurements",
    )  # fmt: skip

    def number(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.4g}"

    for m in measurements:
        verdict = _verdict(m.verdict)
        table.add_row(
            str(m.wave + 1), m.gate, number(m.canary_value), number(m.baseline_value),
            number(m.threshold), f"{m.canary_devices}/{m.baseline_devices}",
            verdict, m.note,
        )  # fmt: skip
    return table


def progress_line(rollout: admin_pb2.Rollout, stamped: bool = True) -> str:
    """One line per change of a watched rollout, for logs and pipes (no terminal); it starts
    with the time unless `stamped` is False (what the watcher compares to see a change)."""
    state = state_name(rollout)
    parts = [
        *([time.strftime("%H:%M:%S")] if stamped else []),
        f"rollout {rollout.rollout_id} {rollout.model_name} -> {rollout.version}: {state}",
    ]
    if rollout.waves:
        wave = rollout.waves[min(rollout.current_wave, len(rollout.waves) - 1)]
        parts.append(
            f"wave {wave.index + 1}/{len(rollout.waves)} ({wave.percent:g}%):"
            f" {wave.installed}/{wave.target_devices} installed, {wave.failed} failed,"
            f" {wave.timed_out} timed out"
        )
        verdicts = [f"{w.index + 1}:{_verdict(w.verdict)}" for w in rollout.waves if w.verdict]
        if verdicts:
            parts.append("verdicts " + " ".join(verdicts))
    if rollout.reason:
        parts.append(f"reason: {rollout.reason}")
    return "  ".join(parts)
