"""The operator dashboard in a real headless Chromium (Debian's), during a running rollout: the
rendered DOM shows the devices and the wave; a screenshot is saved. Without the admin token the
dashboard shows nothing."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from fleet.bundle import build_bundle
from fleet.keys import load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import MODEL, rollout_state, start_nodes, wait_for
from testkit.fleet_models import build_model_dir
from testkit.services import chromium

# Headless Chromium against a real controller: a system test.
pytestmark = pytest.mark.system


async def test_dashboard_in_chromium_during_a_rollout(tmp_path, signing_keys):
    from fleet.controller.app import ControllerApp
    from fleet.ctl.client import AdminClient, AdminCredential
    from testkit.fleet import controller_settings

    app = ControllerApp(
        controller_settings(tmp_path / "controller", signing_keys[1].parent, dashboard_port=0)
    )
    await app.start()
    nodes = []
    try:
        stored = json.loads(app.admin_credential_path.read_text())
        token, url = stored["dashboard_token"], f"https://127.0.0.1:{app.dashboard_port}"
        assert stored["dashboard_url"].endswith(f":{app.dashboard_port}/")
        ca = str(app.settings.data_dir / "pki" / "ca.pem")
        tls = ssl.create_default_context(cafile=ca)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as web:
            # HTTPS with the controller's certificate (checked against its CA), and no way in
            # without the token.
            home = await web.get(f"https://localhost:{app.dashboard_port}/", allow_redirects=False)
            assert home.status == 302 and home.headers["Location"] == "/login"
            assert (await web.get(f"{url}/fragment")).status == 401
            wrong = await web.post(f"{url}/login", data={"token": token[:-1] + "x"})
            assert wrong.status == 401
            bearer = {"Authorization": f"Bearer {token}"}
            empty = await web.get(f"{url}/fragment", headers=bearer)
            assert empty.status == 200 and "No rollouts yet" in await empty.text()

        credential = AdminCredential.load(app.admin_credential_path)
        async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as admin:
            nodes = await start_nodes(
                tmp_path, 3, app, admin, (signing_keys[1],), online_within_s=30
            )
            source = build_model_dir(tmp_path / "build", MODEL, "1")
            bundle = build_bundle(source, MODEL, "2", load_private_key(signing_keys[0]), tmp_path)
            uploaded = await admin.upload_bundle(bundle)
            created = await admin.stub.CreateRollout(
                admin_pb2.CreateRolloutRequest(
                    bundle_sha256=uploaded.bundle_sha256, selector={"site": "lobby"},
                    steps=[33, 66, 100], bake_s=60, gates=["error_rate < 0.5"], min_devices=1,
                    min_requests=1, install_timeout_s=30,
                )
            )  # fmt: skip
            rollout_id = created.rollout.rollout_id
            baking = admin_pb2.RolloutState.ROLLOUT_STATE_BAKING

            async def first_wave_baking() -> bool:
                state: int = (await rollout_state(admin, rollout_id)).state
                return state == baking

            await wait_for(first_wave_baking, 60, "the first wave baking")
            await asyncio.sleep(1.5)  # a few telemetry samples for the charts

            profile = tmp_path / "chromium"
            dom = await asyncio.to_thread(
                chromium, f"{url}/login#token={token}", profile, "--dump-dom"
            )
            screenshot = tmp_path / "dashboard.png"
            # Session cookies do not outlive a headless run: this one signs in too.
            await asyncio.to_thread(
                chromium, f"{url}/login#token={token}", profile, f"--screenshot={screenshot}",
                "--window-size=1400,1800",
            )  # fmt: skip
    finally:
        for node in nodes:
            await node.stop()
        await app.stop(0.2)

    for index in range(3):
        assert f'data-device="cam-{index}"' in dom, dom[:2000]
    assert dom.count('<tr data-device="cam-') == 3
    assert f'data-rollout="{rollout_id}"' in dom
    assert 'data-wave="0" class="wave running"' in dom
    assert "BAKING" in dom and "wave 1 of 3" in dom
    assert "<polyline" in dom  # telemetry charts drawn from live samples
    assert "rollout.create" in dom or "bundle.upload" in dom  # the audit log
    assert token not in dom
    png = await asyncio.to_thread(Path(screenshot).read_bytes)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
