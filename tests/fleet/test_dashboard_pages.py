"""The dashboard's HTML without a browser: a 10,000-device fleet is searched, filtered and
paginated on the server within a fraction of a second; a rolled-back rollout shows no running
wave and no "N/N installed"; each device's deployment state in a rollout."""

from __future__ import annotations

import time

from fleet.controller.api import dashboard_pages as pages
from fleet.controller.api.dashboard import Dashboard
from fleet.controller.api.dashboard_pages import DevicePage, DeviceQuery, RolloutFacts
from fleet.controller.api.sessions import DashboardSessions
from fleet.controller.devices import DeviceView
from fleet.controller.live import TelemetrySample
from fleet.controller.store.records import (
    AuditRecord,
    DeviceInstall,
    DeviceRecord,
    PreviousVersion,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    Verdict,
    WaveRecord,
)

FLEET = 10_000


def _records() -> list[DeviceRecord]:
    return [
        DeviceRecord(
            device_id=f"cam-{index:05d}",
            labels={"site": f"site-{index % 40}", "floor": str(index % 7)},
            enrolled_at=0.0,
            active_versions={"tiny": "2" if index % 10 == 0 else "1"},
        )
        for index in range(FLEET)
    ]


class FakeView:
    """A FleetView over 10,000 records in memory (the real one reads the registry's)."""

    def __init__(self, rollouts: list[RolloutRecord]) -> None:
        self.records = _records()
        self.by_id = {record.device_id: record for record in self.records}
        self._rollouts = rollouts

    def online(self, device_id: str) -> bool:
        return not device_id.endswith("3")

    async def device_page(self, query: DeviceQuery) -> DevicePage:
        matched = pages.select_devices(
            self.records, query, self.online, lambda d: False, lambda d: False
        )
        first = (query.page - 1) * pages.PAGE_SIZE
        views = [
            DeviceView(record, self.online(record.device_id), 0.0, [], None)
            for record in matched[first : first + pages.PAGE_SIZE]
        ]
        online = sum(self.online(r.device_id) for r in self.records)
        return DevicePage(views, query, len(matched), len(self.records), online)

    def record(self, device_id: str) -> DeviceRecord | None:
        return self.by_id.get(device_id)

    def rollouts(self) -> list[RolloutRecord]:
        return self._rollouts

    async def facts(self, rollout: RolloutRecord) -> RolloutFacts:
        return RolloutFacts((), "replica-a", ())

    async def audit(self, limit: int) -> list[AuditRecord]:
        return []

    def samples(self, device_id: str, window_s: float) -> list[TelemetrySample]:
        return []

    def install_phase(self, device_id: str, model: str, version: str) -> str:
        return ""

    async def act(self, verb: str, rollout_id: str, actor: str) -> RolloutRecord:
        raise NotImplementedError


def _rollout(state: RolloutState, installs: dict[str, DeviceInstall]) -> RolloutRecord:
    eligible = [f"cam-{index:05d}" for index in range(FLEET)]
    return RolloutRecord(
        rollout_id="r1", model_name="tiny", version="2", bundle_size=1, created_at=0.0,
        updated_at=time.time(), state=state, current_wave=1,
        waves=[
            WaveRecord(index=0, percent=1, devices=eligible[:100], verdict=Verdict.PASS),
            WaveRecord(index=1, percent=50, devices=eligible[100:5000]),
            WaveRecord(index=2, percent=100),
        ],
        eligible=eligible, installs=installs,
        previous={d: PreviousVersion(version="1") for d in eligible},
        spec=RolloutSpec(bundle_sha256="a" * 64, steps=[1, 50, 100], bake_s=60),
    )  # fmt: skip


async def test_ten_thousand_devices_are_filtered_and_paginated_on_the_server():
    installs = {f"cam-{i:05d}": DeviceInstall.INSTALLED for i in range(5000)}
    view = FakeView([_rollout(RolloutState.BAKING, installs)])
    dashboard = Dashboard(view, "token", DashboardSessions(b"k" * 32))
    started = time.perf_counter()
    html = await dashboard.render(DeviceQuery())
    first_page_s = time.perf_counter() - started
    assert html.count('<tr data-device="cam-') == pages.PAGE_SIZE
    assert "1–50 of 10000" in html and "page 1 of 200" in html and 'rel="next"' in html
    started = time.perf_counter()
    html = await dashboard.render(
        DeviceQuery.parse({"label": "site=site-7", "state": "online", "version": "v2",
                           "q": "cam-0", "page": "2"})
    )  # fmt: skip
    filtered_s = time.perf_counter() - started
    # site-7 and version 2: index % 40 == 7 and index % 10 == 0 never meet.
    assert "0–0 of 0" in html
    html = await dashboard.render(DeviceQuery.parse({"label": "site=site-0", "page": "3"}))
    rows = [part.split('"')[0] for part in html.split('<tr data-device="')[1:]]
    assert len(rows) == 50 and rows[0] == "cam-04000" and "101–150 of 250" in html
    assert all(int(row[4:]) % 40 == 0 for row in rows)
    print(f"10,000 devices: first page {first_page_s * 1000:.0f} ms, "
          f"filtered {filtered_s * 1000:.0f} ms")  # fmt: skip
    # A wave of thousands lists its first devices and counts them all.
    assert "4900 devices" in html and "… and 4800 more" in html
    assert first_page_s < 2.0 and filtered_s < 2.0


def test_a_rolled_back_rollout_shows_no_running_wave_nor_installed_devices():
    installs = {f"cam-{i:05d}": DeviceInstall.INSTALLED for i in range(3)}
    rollout = _rollout(RolloutState.ROLLED_BACK, installs)
    rollout.eligible = rollout.eligible[:3]
    rollout.waves[0].devices = rollout.eligible[:1]
    rollout.waves[1].devices = rollout.eligible[1:3]
    records = {d: DeviceRecord(device_id=d, enrolled_at=0, active_versions={"tiny": "1"})
               for d in rollout.eligible}  # fmt: skip
    records["cam-00002"].active_versions["tiny"] = "2"  # not back yet
    html = pages.rollouts_section([rollout], {}, records.get, "csrf")
    assert "running" not in html and "installed" not in html, html
    assert "rolled back · 3 of 3 devices returned" in html
    assert 'data-wave="1" class="wave stopped"' in html
    assert 'data-wave="2" class="wave not run"' in html
    assert 'data-state="rolled back"' in html and 'data-state="rolling back"' in html
    assert "<button" not in html  # a finished rollout has nothing to press


def test_each_device_has_its_deployment_state():
    eligible = ["a", "b", "c", "d", "e"]
    rollout = RolloutRecord(
        rollout_id="r", model_name="tiny", version="2", bundle_size=1, created_at=0.0,
        updated_at=0.0, state=RolloutState.INSTALLING, current_wave=0, eligible=eligible,
        waves=[WaveRecord(index=0, percent=80, devices=eligible[:4]),
               WaveRecord(index=1, percent=100)],
        installs={"a": DeviceInstall.INSTALLED, "b": DeviceInstall.PENDING,
                  "c": DeviceInstall.FAILED, "d": DeviceInstall.TIMED_OUT},
        install_errors={"c": "smoke test failed: output NaN", "d": "no answer in 600 s"},
        spec=RolloutSpec(bundle_sha256="a" * 64, steps=[80, 100], bake_s=1),
    )  # fmt: skip
    record = {d: DeviceRecord(device_id=d, enrolled_at=0, active_versions={"tiny": "1"})
              for d in eligible}  # fmt: skip
    record["a"].active_versions["tiny"] = "2"

    def state(device_id: str, wave: int) -> tuple[str, str]:
        return pages.deployment_state(rollout, device_id, record[device_id], wave)

    assert state("a", 0) == ("active", "")
    assert state("b", 0) == ("installing", "v1 active")
    assert state("c", 0) == ("failed", "smoke test failed: output NaN")
    assert state("d", 0) == ("timed out", "no answer in 600 s")
    assert state("e", 1) == ("waiting", "")
    # While pending, the phase the agent last reported.
    for phase in ("downloading", "verifying", "installing", "smoke test"):
        assert pages.deployment_state(rollout, "b", record["b"], 0, phase) == (phase, "v1 active")
    assert pages.planned_waves(rollout) == [eligible[:4], ["e"]]
    html = pages.rollouts_section([rollout], {}, record.get, "csrf")
    assert "1 active · 1 failed · 1 installing · 1 timed out" in html
    assert 'data-verb="pause"' in html and 'name="csrf" value="csrf"' in html


async def test_install_phases_travel_to_the_other_replicas():
    """A replica hears another's `phase` note and shows the same phase."""
    from fleet.controller.live import LiveFleet
    from fleet.controller.replication.changefeed import Change, decode, encode
    from fleet.controller.replication.inbound import InboundChanges

    told: list[tuple[str, list[str]]] = []
    here = LiveFleet(10, announce=lambda kind, ids: told.append((kind, list(ids))))
    here.install_progress("cam-1", "tiny", "2", "smoke test")
    [(kind, ids)] = told
    note = decode(encode("a", kind, ids)[0])
    assert isinstance(note, Change)
    there = LiveFleet(10)
    inbound = InboundChanges(None, there, None, None)  # type: ignore[arg-type]
    await inbound.on_change(note)
    assert there.install_phase("cam-1", "tiny", "2") == "smoke test"
    assert there.install_phase("cam-1", "tiny", "3") == ""  # another version's install


def test_the_driving_replica_and_its_takeovers_are_shown():
    installs = {f"cam-{i:05d}": DeviceInstall.PENDING for i in range(100)}
    rollout = _rollout(RolloutState.BAKING, installs)
    takeover = AuditRecord(
        at=0.0, actor="controller:b", action="rollout.takeover",
        detail={"rollout": "r1", "fencing_token": 2},
    )  # fmt: skip
    facts = {"r1": RolloutFacts((), "b", (takeover,))}
    html = pages.rollouts_section([rollout], facts, lambda d: None, "csrf", now=time.time())
    assert "driven by replica <b>b</b>" in html
    assert "00:00:00 UTC: taken over by b (fencing token 2)" in html
    assert 'class="bake"' in html and "left of 60 s" in html
