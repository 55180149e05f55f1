"""Rollout gates: parse `p95_latency_ms <= 1.2*baseline + 2`, measure cohorts, judge three ways.

A gate is judged on the devices of the wave (canary) against the devices still on the old
version (baseline). Too few reporting devices is INCONCLUSIVE, never PASS: an idle fleet at
night must not promote a model.
"""

from __future__ import annotations

import math
import operator
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from common.telemetry import ModelTelemetry
from fleet.controller.store.records import Measurement, Verdict
from fleet.errors import InvalidRequest

METRICS = ("p50_latency_ms", "p95_latency_ms", "fps", "error_rate", "drop_rate")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}
_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?"
_GATE = re.compile(
    rf"^\s*(?P<metric>[a-z0-9_]+)\s*(?P<op><=|>=|<|>)\s*"
    rf"(?:(?P<factor>{_NUMBER})\s*\*\s*)?(?P<base>baseline|{_NUMBER})"
    rf"(?:\s*(?P<sign>[-+])\s*(?P<offset>{_NUMBER}))?\s*$"
)


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    op: str
    # None: an absolute threshold (`offset`); else factor*baseline + offset.
    factor: float | None
    offset: float

    def threshold(self, baseline: float | None) -> float | None:
        if self.factor is None:
            return self.offset
        return None if baseline is None else self.factor * baseline + self.offset

    def holds(self, value: float, threshold: float) -> bool:
        return _OPERATORS[self.op](value, threshold)


def parse_gate(text: str) -> Gate:
    match = _GATE.match(text)
    if not match:
        raise InvalidRequest(
            f"gate {text!r} must look like 'p95_latency_ms <= 1.2*baseline' or 'error_rate < 0.01'"
        )
    metric = match["metric"]
    if metric not in METRICS:
        raise InvalidRequest(f"gate {text!r}: unknown metric {metric!r}; use one of {METRICS}")
    offset = float(match["offset"] or 0) * (-1 if match["sign"] == "-" else 1)
    if match["base"] == "baseline":
        return Gate(text.strip(), metric, match["op"], float(match["factor"] or 1), offset)
    if match["factor"] or match["offset"]:
        raise InvalidRequest(f"gate {text!r}: only a baseline can be scaled or offset")
    return Gate(text.strip(), metric, match["op"], None, float(match["base"]))


@dataclass(frozen=True)
class DeviceWindow:
    """One device's figures over a bake window, for one model version: counters as grown over
    the window, fps and latencies averaged over it."""

    device_id: str
    figures: ModelTelemetry


def _median_latency(values: Sequence[float]) -> float:
    """Median over devices, a device without a successful request (NaN) counting as the
    slowest: NaN (no data) when the median device served nothing."""
    median = statistics.median(math.inf if math.isnan(value) else value for value in values)
    return math.nan if math.isinf(median) else median


def cohort_figures(devices: Sequence[DeviceWindow]) -> dict[str, float]:
    """Median per device for latency and fps; pooled rates for errors and drops."""
    if not devices:
        return {}
    figures = [device.figures for device in devices]
    requests = sum(f.requests for f in figures)
    drops = sum(f.drops for f in figures)
    return {
        "p50_latency_ms": _median_latency([f.latency_p50_ms for f in figures]),
        "p95_latency_ms": _median_latency([f.latency_p95_ms for f in figures]),
        "fps": statistics.median(f.fps for f in figures),
        "error_rate": sum(f.errors for f in figures) / max(requests, 1),
        "drop_rate": drops / max(requests + drops, 1),
    }


def _no_data_note(canary: Sequence[DeviceWindow]) -> str:
    requests = sum(device.figures.requests for device in canary)
    errors = sum(device.figures.errors for device in canary)
    return f"no data: {requests - errors} of the wave's {requests} requests succeeded"


def certain_failures(
    gates: Sequence[Gate],
    canary: Sequence[DeviceWindow],
    min_devices: int,
    elapsed_s: float,
    bake_s: float,
) -> list[tuple[Gate, str]]:
    """The gates whose failure is already certain part way through a bake (Argo's
    `failureLimit`, Flagger's threshold): the wave ends at once instead of serving a broken
    version for the rest of the bake.

    Certain means: `min_devices` wave devices report, each with --min-requests, and either none
    of their requests succeeded (latency has no data and fps is 0, whatever the gate), or an
    absolute error or drop rate ceiling is exceeded even if every request still to come in the
    bake (at the rate seen so far) succeeds."""
    if len(canary) < min_devices or not canary or elapsed_s <= 0:
        return []
    requests = sum(device.figures.requests for device in canary)
    errors = sum(device.figures.errors for device in canary)
    drops = sum(device.figures.drops for device in canary)
    early = f"early abort after {elapsed_s:.1f} s of the {bake_s:g} s bake"
    if requests and errors >= requests:
        note = f"{early}: {_no_data_note(canary)}"
        return [(gate, note) for gate in gates]
    still_to_come = requests / elapsed_s * max(bake_s - elapsed_s, 0.0)
    best_case = {
        "error_rate": errors / max(requests + still_to_come, 1),
        "drop_rate": drops / max(requests + drops + still_to_come, 1),
    }
    certain = []
    for gate in gates:
        if gate.factor is not None or gate.op not in ("<", "<=") or gate.metric not in best_case:
            continue
        if not gate.holds(best_case[gate.metric], gate.offset):
            certain.append(
                (
                    gate,
                    f"{early}: {gate.metric} stays at least {best_case[gate.metric]:.4g} "
                    "even if every request still to come succeeds",
                )
            )
    return certain


def judge(
    gates: Sequence[Gate],
    wave: int,
    canary: Sequence[DeviceWindow],
    baseline: Sequence[DeviceWindow],
    frozen_baseline: Mapping[str, float],
    min_devices: int,
    now: float,
    min_baseline_devices: int | None = 0,
    live_baseline_note: str = "",
) -> tuple[Verdict, list[Measurement], dict[str, float]]:
    """Judge every gate; return the wave's verdict, the measurements, and the baseline used.

    `min_devices` canary devices must report. The live baseline (devices still on the old
    version) is used when `min_baseline_devices` of them report (0: `min_devices`; None: there
    is no baseline cohort); otherwise `frozen_baseline`, taken before the rollout or from an
    earlier wave: then the measurement says there was no concurrent baseline.
    `live_baseline_note` says what the live baseline is (the last wave's control cohort).
    Absolute gates need no baseline."""
    canary_figures = cohort_figures(canary)
    baseline_note = ""
    need_baseline = min_devices if min_baseline_devices == 0 else min_baseline_devices
    if need_baseline is not None and len(baseline) >= need_baseline:
        baseline_figures = cohort_figures(baseline)
        baseline_note = live_baseline_note
    elif frozen_baseline:
        baseline_figures = dict(frozen_baseline)
        baseline_note = (
            "no concurrent baseline: judged against the baseline from before the rollout or an "
            "earlier wave (no live cohort), which machine load may have moved since"
        )
    else:
        baseline_figures = {}
    measurements: list[Measurement] = []
    for gate in gates:
        value = canary_figures.get(gate.metric, math.nan)
        base = baseline_figures.get(gate.metric) if gate.factor is not None else None
        threshold = gate.threshold(base)
        notes = [baseline_note] if gate.factor is not None and baseline_note else []
        if len(canary) < min_devices:
            verdict = Verdict.INCONCLUSIVE
            notes.append(
                f"{len(canary)} wave devices reported enough traffic, {min_devices} needed"
            )
        elif math.isnan(value):
            # Latency from no successful request: "no data" never passes (Flagger fails it).
            verdict = Verdict.FAIL
            notes.append(_no_data_note(canary))
        elif threshold is None:
            verdict = Verdict.INCONCLUSIVE
            notes.append(
                f"{len(baseline)} baseline devices reported, {need_baseline or min_devices} needed"
                " and no baseline from before the rollout"
            )
        else:
            verdict = Verdict.PASS if gate.holds(value, threshold) else Verdict.FAIL
        measurements.append(
            Measurement(
                wave=wave,
                gate=gate.text,
                metric=gate.metric,
                canary_value=value,
                baseline_value=math.nan if base is None else base,
                threshold=math.nan if threshold is None else threshold,
                verdict=verdict,
                canary_devices=len(canary),
                baseline_devices=len(baseline),
                note="; ".join(notes),
                evaluated_at=now,
            )
        )
    verdicts = {measurement.verdict for measurement in measurements}
    if Verdict.FAIL in verdicts:
        overall = Verdict.FAIL
    elif Verdict.INCONCLUSIVE in verdicts or len(canary) < min_devices:
        overall = Verdict.INCONCLUSIVE
    else:
        overall = Verdict.PASS
    return overall, measurements, baseline_figures
