"""The dashboard's HTML, rendered on the server from plain values (no I/O here): the device
list (searched, filtered and paginated on the server, so it stays usable at 10,000 devices),
the rollouts an operator watches (each device's deployment state, the devices of each wave, the
bake countdown, the replica driving it and its takeovers, the promote / pause / abort buttons),
and the telemetry charts (fps, p95 latency and error rate, with labelled axes)."""

from __future__ import annotations

import html
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from fleet.controller.store.records import (
    AuditRecord,
    DeviceInstall,
    DeviceRecord,
    Measurement,
    RolloutRecord,
    RolloutState,
)

if TYPE_CHECKING:
    from fleet.controller.devices import DeviceView
    from fleet.controller.live import TelemetrySample

PAGE_SIZE = 50
CHART_WINDOW_S = 300.0
# Devices listed under each wave (the counts by state cover all of them).
WAVE_DEVICES_SHOWN = 100
# The device states the list filters on.
STATES = ("online", "offline", "updating", "failed")


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def figure(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# ------------------------------------------------------------------ the device list


@dataclass(frozen=True)
class DeviceQuery:
    """The device list's search and filters, from the page's query string."""

    search: str = ""  # a substring of the device id or of a label value
    label: str = ""  # key=value
    state: str = ""  # one of STATES
    version: str = ""  # a version active on the device (any model)
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> DeviceQuery:
        try:
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            page = 1
        state = query.get("state", "")
        return cls(
            search=query.get("q", "").strip()[:200],
            label=query.get("label", "").strip()[:200],
            state=state if state in STATES else "",
            version=query.get("version", "").strip().removeprefix("v")[:100],
            page=page,
        )

    def link(self, page: int) -> str:
        values = {"q": self.search, "label": self.label, "state": self.state,
                  "version": self.version, "page": str(page)}  # fmt: skip
        return "?" + urlencode({k: v for k, v in values.items() if v and (k != "page" or v != "1")})


def select_devices(
    records: Iterable[DeviceRecord],
    query: DeviceQuery,
    online: Callable[[str], bool],
    updating: Callable[[str], bool],
    failed: Callable[[str], bool],
) -> list[DeviceRecord]:
    """The devices matching `query`, sorted by id: one pass over the in-memory records."""
    search = query.search.lower()
    key, _, value = query.label.partition("=")
    matched = []
    for record in records:
        if (
            search
            and search not in record.device_id.lower()
            and not any(search in label.lower() for label in record.labels.values())
        ):
            continue
        if key and record.labels.get(key) != value:
            continue
        if query.version and query.version not in record.active_versions.values():
            continue
        if query.state:
            device_id = record.device_id
            is_online = online(device_id)
            wanted = {
                "online": is_online,
                "offline": not is_online,
                "updating": query.state == "updating" and updating(device_id),
                "failed": query.state == "failed" and failed(device_id),
            }
            if not wanted[query.state]:
                continue
        matched.append(record)
    matched.sort(key=lambda record: record.device_id)
    return matched


@dataclass(frozen=True)
class DevicePage:
    views: Sequence[DeviceView]
    query: DeviceQuery
    matching: int
    fleet: int
    online: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.matching / PAGE_SIZE))


def filter_form(query: DeviceQuery) -> str:
    options = "".join(
        f'<option value="{state}"{" selected" if state == query.state else ""}>{state}</option>'
        for state in STATES
    )
    return (
        '<form id="filter" method="get" action="/" role="search">'
        f'<input name="q" value="{e(query.search)}" placeholder="search id or label"'
        ' aria-label="search">'
        f' <input name="label" value="{e(query.label)}" placeholder="label key=value"'
        ' aria-label="label">'
        f' <select name="state" aria-label="state"><option value="">any state</option>{options}'
        f'</select> <input name="version" value="{e(query.version)}" placeholder="version"'
        ' aria-label="version"> <button>Filter</button></form>'
    )


def devices_table(page: DevicePage) -> str:
    rows = []
    for device in page.views:
        record = device.record
        desired = {entry.model: entry for entry in device.desired}
        models = sorted(set(record.active_versions) | set(desired))
        versions = ", ".join(
            f"{e(m)} v{e(record.active_versions.get(m, '?'))}"
            + (
                f" → v{e(desired[m].version)}"
                if m in desired and desired[m].version != record.active_versions.get(m)
                else ""
            )
            for m in models
        )
        errors_text = "; ".join(
            f"{e(entry.model)}: {e(entry.last_error)}"
            for entry in device.desired
            if entry.last_error
        )
        fps = p95 = errors = ""
        if device.latest is not None:
            figures = device.latest.record.models
            fps = " / ".join(figure(model.fps) for model in figures)
            p95 = " / ".join(figure(model.latency_p95_ms) for model in figures)
            errors = " / ".join(str(model.errors) for model in figures)
        labels = " ".join(f"{e(k)}={e(v)}" for k, v in sorted(record.labels.items()))
        state = "online" if device.online else "offline"
        rows.append(
            f'<tr data-device="{e(record.device_id)}" class="{state}">'
            f"<td>{e(record.device_id)}</td><td>{labels}</td><td>{state}</td>"
            f"<td>{versions}</td><td>{fps}</td><td>{p95}</td><td>{errors}</td>"
            f'<td class="problem">{errors_text}</td></tr>'
        )
    query = page.query
    first = (query.page - 1) * PAGE_SIZE + 1 if page.matching else 0
    last = min(query.page * PAGE_SIZE, page.matching)
    pager = [f'<span class="count">{first}–{last} of {page.matching}</span>']
    if query.page > 1:
        pager.insert(0, f'<a rel="prev" href="{e(query.link(query.page - 1))}">← previous</a>')
    if query.page < page.pages:
        pager.append(f'<a rel="next" href="{e(query.link(query.page + 1))}">next →</a>')
    return (
        '<section id="devices"><h2>Devices</h2>'
        f'<nav class="pager">{" ".join(pager)} · page {query.page} of {page.pages}</nav>'
        "<table><thead><tr><th>device</th><th>labels</th><th>state</th>"
        "<th>version (active → desired)</th><th>fps</th><th>p95 ms</th><th>errors</th>"
        f"<th>install problem</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


# ------------------------------------------------------------------ rollouts


def deployment_state(
    rollout: RolloutRecord,
    device_id: str,
    record: DeviceRecord | None,
    wave: int,
    phase: str = "",
) -> tuple[str, str]:
    """One device's part in a rollout, as (state, reason): waiting, then downloading,
    verifying, installing, smoke test (the agent's `phase` while the install is pending), then
    active, failed (with its reason) or timed out; not reached, rolling back or rolled back once
    the rollout was rolled back; held back (a device of a running wave it does not install)."""
    install = rollout.installs.get(device_id)
    active = record.active_versions.get(rollout.model_name) if record else None
    if rollout.state == RolloutState.ROLLED_BACK:
        if install is None:
            return "not reached", ""
        back = rollout.previous.get(device_id)
        target = f"v{back.version}" if back else "no version"
        done = (back is None and active is None) or (back is not None and active == back.version)
        return ("rolled back" if done else "rolling back"), f"to {target}"
    if install is None:
        return ("waiting" if wave > rollout.current_wave else "held back"), ""
    if install == DeviceInstall.FAILED:
        return "failed", rollout.install_errors.get(device_id, "")
    if install == DeviceInstall.TIMED_OUT:
        return "timed out", rollout.install_errors.get(device_id, "")
    if install == DeviceInstall.INSTALLED:
        return ("active" if active in (None, rollout.version) else "installed"), ""
    return phase or "installing", f"v{active} active" if active else ""


def planned_waves(rollout: RolloutRecord) -> list[list[str]]:
    """Each wave's devices: those it was given once started, else those its percentage will
    take (the cohort order is fixed when the rollout starts)."""
    taken: set[str] = set()
    planned = []
    for wave in rollout.waves:
        devices = list(wave.devices)
        if not devices:
            count = max(1, math.ceil(len(rollout.eligible) * wave.percent / 100))
            devices = [d for d in rollout.eligible[:count] if d not in taken]
        taken.update(devices)
        planned.append(devices)
    return planned


def _wave_status(rollout: RolloutRecord, index: int) -> str:
    """A wave's verdict, else what it is doing now; a finished rollout runs no wave (a rolled
    back rollout's unjudged waves never ran to a verdict)."""
    wave = rollout.waves[index]
    if wave.verdict is not None:
        return wave.verdict.value
    if rollout.state.finished:
        return "stopped" if index == rollout.current_wave else "not run"
    if index == rollout.current_wave:
        return "paused" if rollout.state == RolloutState.PAUSED else "running"
    return "waiting"


def _progress(rollout: RolloutRecord) -> str:
    installs = Counter(rollout.installs.values())
    total = len(rollout.eligible)
    if rollout.state == RolloutState.ROLLED_BACK:
        return (
            f"rolled back · {len(rollout.installs)} of {total} devices returned to their"
            " previous version"
        )
    installed = installs[DeviceInstall.INSTALLED]
    failed = installs[DeviceInstall.FAILED] + installs[DeviceInstall.TIMED_OUT]
    wave = min(rollout.current_wave + 1, len(rollout.waves))
    text = f"wave {wave} of {len(rollout.waves)} · {installed}/{total} devices installed"
    return text + (f" · {failed} failed" if failed else "")


def _countdown(rollout: RolloutRecord, now: float) -> str:
    """The bake's time left: the wave went BAKING at its last write (a takeover bakes again)."""
    if rollout.state != RolloutState.BAKING:
        return ""
    ends = rollout.updated_at + rollout.spec.bake_s
    left = max(0.0, ends - now)
    return (
        f'<p class="bake" data-ends="{ends:.0f}">bake: <b class="left">{left:.0f} s</b> left of'
        f" {rollout.spec.bake_s:g} s</p>"
    )


def _buttons(rollout: RolloutRecord, csrf: str) -> str:
    if rollout.state.finished:
        return ""
    verbs = ["promote", "abort"]
    if rollout.state != RolloutState.PAUSED:
        verbs.insert(1, "pause")
    forms = "".join(
        f'<form method="post" action="/rollouts/{e(rollout.rollout_id)}/{verb}" class="verb">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<button name="verb" value="{verb}" data-verb="{verb}">{verb.capitalize()}</button>'
        "</form>"
        for verb in verbs
    )
    return f'<div class="buttons">{forms}</div>'


@dataclass(frozen=True)
class RolloutFacts:
    """What the rollout section shows beyond the record."""

    measurements: Sequence[Measurement]
    driver: str  # the replica holding the rollout's lease, "" if none
    takeovers: Sequence[AuditRecord]


def rollouts_section(
    rollouts: Sequence[RolloutRecord],
    facts: Mapping[str, RolloutFacts],
    record: Callable[[str], DeviceRecord | None],
    csrf: str,
    now: float | None = None,
    phase: Callable[[str, str, str], str] = lambda device, model, version: "",
) -> str:
    """`phase(device, model, version)`: the install phase the device last reported."""
    now = time.time() if now is None else now
    parts = ['<section id="rollouts"><h2>Rollouts</h2>']
    if not rollouts:
        parts.append("<p>No rollouts yet.</p>")
    for rollout in rollouts:
        fact = facts.get(rollout.rollout_id, RolloutFacts((), "", ()))
        waves = []
        for wave, devices_of_wave in zip(rollout.waves, planned_waves(rollout), strict=True):
            status = _wave_status(rollout, wave.index)
            states = [
                (
                    device_id,
                    *deployment_state(
                        rollout, device_id, record(device_id), wave.index,
                        phase(device_id, rollout.model_name, rollout.version),
                    ),
                )
                for device_id in devices_of_wave
            ]  # fmt: skip
            counts = Counter(state for _, state, _ in states)
            summary = " · ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            devices = "".join(
                f'<li data-device="{e(device_id)}" data-state="{e(state)}">{e(device_id)}:'
                f' <span class="deploy {e(state.replace(" ", "-"))}">{e(state)}</span>'
                f"{' · ' + e(reason) if reason else ''}</li>"
                for device_id, state, reason in states[:WAVE_DEVICES_SHOWN]
            )
            more = len(states) - WAVE_DEVICES_SHOWN
            waves.append(
                f'<li data-wave="{wave.index}" class="wave {e(status)}">wave {wave.index + 1}:'
                f" {wave.percent:g}% · {len(devices_of_wave)} devices · <b>{e(status)}</b>"
                f"{' · ' + e(wave.reason) if wave.reason else ''}"
                f'<div class="summary">{e(summary)}</div>'
                f'<ul class="wave-devices">{devices}'
                f"{f'<li>… and {more} more</li>' if more > 0 else ''}</ul></li>"
            )
        why = "".join(
            f'<tr class="{e(m.verdict.value)}"><td>{m.wave + 1}</td><td>{e(m.gate)}</td>'
            f"<td>{figure(m.canary_value, 2)}</td><td>{figure(m.baseline_value, 2)}</td>"
            f"<td>{figure(m.threshold, 2)}</td><td>{m.canary_devices}/{m.baseline_devices}</td>"
            f"<td><b>{e(m.verdict.value)}</b></td><td>{e(m.note)}</td></tr>"
            for m in fact.measurements
        )
        driver = (
            f'<p class="driver">driven by replica <b>{e(fact.driver)}</b></p>'
            if fact.driver and not rollout.state.finished
            else ""
        )
        takeovers = "".join(
            f"<li>{time.strftime('%H:%M:%S', time.gmtime(entry.at))} UTC: taken over by"
            f" {e(entry.actor.removeprefix('controller:'))}"
            f" (fencing token {e(entry.detail.get('fencing_token', '?'))})</li>"
            for entry in fact.takeovers
        )
        parts.append(
            f'<article class="rollout" data-rollout="{e(rollout.rollout_id)}"'
            f' data-state="{e(rollout.state.value)}">'
            f"<h3>{e(rollout.model_name)} v{e(rollout.version)} · {e(rollout.rollout_id)} ·"
            f' <span class="state">{e(rollout.state.value)}</span></h3>'
            f'<p class="progress">{e(_progress(rollout))}'
            f"{' · ' + e(rollout.reason) if rollout.reason else ''}</p>"
            f"{_countdown(rollout, now)}{driver}"
            f"{f'<ul class=takeovers>{takeovers}</ul>' if takeovers else ''}"
            f"{_buttons(rollout, csrf)}"
            f'<ol class="waves">{"".join(waves)}</ol>'
            '<table class="why"><thead><tr><th>wave</th><th>gate</th><th>canary</th>'
            "<th>baseline</th><th>threshold</th><th>devices</th><th>verdict</th><th>note</th>"
            f"</tr></thead><tbody>{why}</tbody></table></article>"
        )
    parts.append("</section>")
    return "".join(parts)


# ------------------------------------------------------------------ charts

Series = list[tuple[float, float]]


@dataclass(frozen=True)
class DeviceSeries:
    """One device's fps, p95 latency (ms) and error rate (%) over time (loop time)."""

    fps: Series
    p95: Series
    errors: Series


def device_series(samples: Sequence[TelemetrySample]) -> DeviceSeries:
    fps: Series = []
    p95: Series = []
    errors: Series = []
    previous = None
    for sample in samples:
        models = sample.record.models
        fps.append((sample.at, sum(model.fps for model in models)))
        p95.append((sample.at, max((model.latency_p95_ms for model in models), default=0.0)))
        requests = sum(model.requests for model in models)
        failed = sum(model.errors for model in models)
        if previous is not None and requests > previous[0]:
            rate = max(0, failed - previous[1]) / (requests - previous[0]) * 100
            errors.append((sample.at, rate))
        previous = (requests, failed)
    return DeviceSeries(fps, p95, errors)


def _axis_label(value: float) -> str:
    return f"{value:.3g}"


def chart(title: str, unit: str, points: Series, t0: float, now: float) -> str:
    """An SVG line chart with labelled axes: y from 0 to the series' top (in `unit`), x the
    seconds before the newest sample."""
    finite = [(t, v) for t, v in points if not math.isnan(v)]
    top = max((value for _, value in finite), default=0.0) * 1.2 or 1.0
    span = max(now - t0, 1.0)
    width, height, left, bottom = 300.0, 90.0, 40.0, 18.0
    plot_w, plot_h = width - left - 4, height - bottom - 4
    coords = " ".join(
        f"{left + (t - t0) / span * plot_w:.1f},{4 + plot_h - value / top * plot_h:.1f}"
        for t, value in finite
    )
    line = (
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{coords}"/>'
        if finite
        else ""
    )
    last = figure(finite[-1][1]) if finite else "–"
    axes = (
        f'<line x1="{left}" y1="4" x2="{left}" y2="{4 + plot_h}" stroke="#8c959f"/>'
        f'<line x1="{left}" y1="{4 + plot_h}" x2="{width - 4}" y2="{4 + plot_h}"'
        ' stroke="#8c959f"/>'
        f'<text class="y-max" x="{left - 3}" y="12" text-anchor="end">{_axis_label(top)}</text>'
        f'<text class="y-min" x="{left - 3}" y="{4 + plot_h}" text-anchor="end">0</text>'
        f'<text class="y-unit" x="2" y="{4 + plot_h / 2 + 3}">{e(unit)}</text>'
        f'<text class="x-min" x="{left}" y="{height - 3}">−{span:.0f} s</text>'
        f'<text class="x-max" x="{width - 4}" y="{height - 3}" text-anchor="end">now</text>'
    )
    return (
        f'<figure class="chart" data-metric="{e(unit)}"><figcaption>{e(title)}: {last} {e(unit)}'
        f'</figcaption><svg viewBox="0 0 {width:g} {height:g}" width="{width:g}"'
        f' height="{height:g}" role="img" aria-label="{e(title)} ({e(unit)}) over time">'
        f"{axes}{line}</svg></figure>"
    )


def _mean_by_second(series: Iterable[Series]) -> Series:
    buckets: dict[int, list[float]] = {}
    for points in series:
        for t, value in points:
            buckets.setdefault(int(t), []).append(value)
    return [(float(t), sum(values) / len(values)) for t, values in sorted(buckets.items())]


def charts_section(
    page_devices: Sequence[str],
    cohorts: Mapping[str, Sequence[str]],
    samples: Callable[[str, float], Sequence[TelemetrySample]],
) -> str:
    """Per version cohort (mean per device) and for the devices on the current page: fps, p95
    latency and error rate side by side."""
    wanted = dict.fromkeys([*page_devices, *(d for ids in cohorts.values() for d in ids)])
    held = {device_id: samples(device_id, CHART_WINDOW_S) for device_id in wanted}
    now = max((s[-1].at for s in held.values() if s), default=0.0)
    oldest = min((s[0].at for s in held.values() if s), default=now)
    t0 = max(now - CHART_WINDOW_S, oldest)
    series = {device_id: device_series(s) for device_id, s in held.items()}
    rows = []
    for name, device_ids in sorted(cohorts.items()):
        members = [series[d] for d in device_ids if d in series]
        rows.append(
            f'<div class="charts cohort" data-cohort="{e(name)}">'
            + chart(f"cohort {name} fps (mean per device)", "fps",
                    _mean_by_second(m.fps for m in members), t0, now)
            + chart(f"cohort {name} p95 latency", "ms",
                    _mean_by_second(m.p95 for m in members), t0, now)
            + chart(f"cohort {name} error rate", "%",
                    _mean_by_second(m.errors for m in members), t0, now)
            + "</div>"
        )  # fmt: skip
    for device_id in page_devices:
        points = series.get(device_id)
        if points is None or not points.fps:
            continue
        rows.append(
            f'<div class="charts device" data-device="{e(device_id)}">'
            + chart(f"{device_id} fps", "fps", points.fps, t0, now)
            + chart(f"{device_id} p95 latency", "ms", points.p95, t0, now)
            + chart(f"{device_id} error rate", "%", points.errors, t0, now)
            + "</div>"
        )
    return f'<section id="telemetry"><h2>Telemetry (last 5 minutes)</h2>{"".join(rows)}</section>'


def audit_table(entries: Sequence[AuditRecord]) -> str:
    rows = "".join(
        f"<tr><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entry.at))}</td>"
        f"<td>{e(entry.actor)}</td><td>{e(entry.action)}</td>"
        f"<td>{e(' '.join(f'{k}={v}' for k, v in entry.detail.items()))}</td></tr>"
        for entry in reversed(entries)
    )
    return (
        '<section id="audit"><h2>Audit log</h2><table><thead><tr><th>when (UTC)</th>'
        f"<th>actor</th><th>action</th><th>detail</th></tr></thead><tbody>{rows}</tbody>"
        "</table></section>"
    )
