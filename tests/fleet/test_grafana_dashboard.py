"""The Grafana dashboard (deploy/grafana/edgefleet.json) is valid and every metric its panels
query is one a real controller and a real edge server expose on /metrics, so a renamed metric
fails here rather than as an empty panel in an operator's Grafana."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from testkit.fleet import scrape_controller, start_node, wait_for
from testkit.repositories import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "edgefleet.json"
# PromQL functions and keywords are not metrics; every edgefleet metric starts with the prefix.
METRIC = re.compile(r"\bedgefleet_[a-z0-9_]+\b")


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _series_names(url: str) -> set[str]:
    """Every series name a scrape of `url` can return: counters as _total, histograms as
    _bucket/_sum/_count, as Prometheus stores them."""
    return _names(_scrape(url))


def _names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = _panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    queries = [panel for panel in panels if panel["type"] != "row"]
    assert len(queries) >= 10
    for panel in queries:
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), (panel["title"], target["expr"])
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


async def test_every_dashboard_metric_is_on_a_real_metrics_endpoint(tmp_path, signing_keys):
    from fleet.controller.app import ControllerApp
    from fleet.ctl.client import AdminClient, AdminCredential
    from testkit.fleet import controller_settings

    dashboard = json.loads(DASHBOARD.read_text())
    wanted = {
        name: panel["title"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
        for name in METRIC.findall(target["expr"])
    }
    app = ControllerApp(
        controller_settings(tmp_path / "controller", signing_keys[1].parent, metrics_port=0)
    )
    await app.start()
    node = None
    try:
        credential = AdminCredential.load(app.admin_credential_path)
        async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as admin:
            node = await start_node(
                "cam-0", tmp_path / "node", app, admin, (signing_keys[1],),
                server_overrides={"metrics_port": 0},
            )  # fmt: skip
            node.start_traffic()
            await wait_for(lambda: node.online() and node.served > 5, 30, "agent and traffic")
            # Telemetry from the agent has reached the controller's per-model gauges.
            services = app.services
            assert services is not None
            await wait_for(lambda: services.live.latest("cam-0") is not None, 30, "sample")
            credential_path = app.admin_credential_path
            scraped, controller_text = await asyncio.to_thread(scrape_controller, credential_path)
            assert scraped == 200, controller_text
            not_metrics, _ = await asyncio.to_thread(scrape_controller, credential_path, "/nope")
            exposed = _names(controller_text)
            exposed |= await asyncio.to_thread(
                _series_names, f"http://127.0.0.1:{node.server.metrics_port}/metrics"
            )
    finally:
        if node is not None:
            await node.stop()
        await app.stop(0.2)
    missing = {name: title for name, title in wanted.items() if name not in exposed}
    assert not missing, f"dashboard panels query metrics nobody exposes: {missing}"
    # The controller follows the same conventions as the edge server (issue 10, item 16).
    assert not_metrics == 404
    assert not [name for name in exposed if name.endswith("_created")]
    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(controller_text)
        for sample in family.samples
    }
    assert samples["process_resident_memory_bytes"].value > 10e6
    assert samples["edgefleet_build_info"].labels["component"] == "controller"
    # Latency in seconds (base units): a CPU classifier answers in well under 10 s, over 10 us.
    assert 1e-5 < samples["edgefleet_model_latency_p95_seconds"].value < 10
    assert samples["edgefleet_model_requests_total"].value > 0
