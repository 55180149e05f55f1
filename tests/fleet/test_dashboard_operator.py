"""The dashboard an operator runs a rollout from (issue 24), in a real headless Chromium driven
over the DevTools protocol: signed in through the page, every element is on the page and on
its screenshot (a full-page PNG whose region under each element is not blank), and its buttons
drive a real rollout: pause, promote (the next wave starts), abort (rolled back, no wave left
running). The device list's filters and pagination work on the server; a POST without the
session's CSRF token is refused; sign-out ends the session."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageStat

from fleet.bundle import build_bundle
from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from fleet.keys import load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import MODEL, controller_settings, rollout_state, start_node, wait_for
from testkit.fleet_models import build_model_dir
from testkit.services import chromium_binary

# Starts controllers, edge servers or services (PostgreSQL, Chromium): a system test.
pytestmark = pytest.mark.system

STATE = admin_pb2.RolloutState
# What an operator needs on the page during a rollout, by CSS selector.
ELEMENTS = {
    "device filter": "#filter",
    "device list": "#devices table",
    "pager": "#devices .pager",
    "rollout": "article.rollout",
    "wave devices with their deployment state": ".wave-devices li[data-state]",
    "bake countdown": ".bake .left",
    "driving replica": ".driver",
    "promote button": "button[data-verb=promote]",
    "pause button": "button[data-verb=pause]",
    "abort button": "button[data-verb=abort]",
    "fps chart": "figure[data-metric=fps] svg",
    "latency chart": "figure[data-metric=ms] svg",
    "error chart": "figure[data-metric='%'] svg",
    "chart axis label": "figure[data-metric=ms] .y-unit",
    "audit log": "#audit table",
    "sign out": "#logout button",
}


# Chromium's answers to an evaluation made while the page navigates.
NAVIGATING = (
    "Inspected target navigated or closed",
    "Execution context was destroyed",
    "Cannot find context with specified id",
)


class Browser:
    """Headless Chromium and one page, over the DevTools protocol (a WebSocket)."""

    def __init__(self, profile: Path) -> None:
        self._profile = profile
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = 0

    async def start(self) -> Browser:
        command = [
            chromium_binary(), "--headless", "--disable-gpu", "--no-first-run",
            "--ignore-certificate-errors", f"--user-data-dir={self._profile}",
            "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank",
        ]  # fmt: skip
        if os.geteuid() == 0:
            command.insert(1, "--no-sandbox")
        self._process = subprocess.Popen(  # noqa: ASYNC220 - runs beside the test's loop
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        port_file = self._profile / "DevToolsActivePort"
        await wait_for(port_file.exists, 60, "chromium's DevTools port")
        port = port_file.read_text().split()[0]
        self._session = aiohttp.ClientSession()
        targets: list[dict[str, Any]] = []

        async def page_target() -> bool:
            assert self._session is not None
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets[:] = [t for t in await response.json() if t["type"] == "page"]
            return bool(targets)

        await wait_for(page_target, 30, "a page target")
        self._socket = await self._session.ws_connect(
            targets[0]["webSocketDebuggerUrl"], max_msg_size=0
        )
        await self.send("Page.enable")
        return self

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._socket is not None
        self._ids += 1
        ident = self._ids
        await self._socket.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = json.loads((await self._socket.receive()).data)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def poll(self, expression: str) -> Any:
        """`evaluate` for a wait: while the page navigates (a form's post, a redirect) Chromium
        refuses the evaluation or destroys its context. That is "not yet", not a failure."""
        try:
            return await self.evaluate(expression)
        except RuntimeError as error:
            if any(reason in str(error) for reason in NAVIGATING):
                return None
            raise

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def screenshot(self) -> bytes:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(result["data"])

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()
        if self._process is not None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()


def _blank(png: bytes, box: dict[str, float]) -> bool:
    """Whether the screenshot's region under `box` (CSS pixels, page coordinates) is one flat
    colour: the element is not drawn."""
    image = Image.open(io.BytesIO(png)).convert("L")
    region = image.crop(
        (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]) + 1,
         int(box["y"] + box["height"]) + 1)
    )  # fmt: skip
    return region.width == 0 or region.height == 0 or ImageStat.Stat(region).stddev[0] < 1.0


async def test_an_operator_runs_a_rollout_from_the_dashboard(tmp_path, signing_keys):
    app = ControllerApp(
        controller_settings(tmp_path / "controller", signing_keys[1].parent, dashboard_port=0)
    )
    await app.start()
    nodes = []
    browser = None
    # The install phases agents report, as the controller hears them.
    assert app.services is not None
    live = app.services.live
    phases: list[tuple[str, str, str]] = []
    heard = live.install_progress

    def spy(device_id: str, model: str, version: str, phase: str, announce: bool = True) -> None:
        phases.append((device_id, version, phase))
        heard(device_id, model, version, phase, announce)

    live.install_progress = spy  # type: ignore[method-assign]
    try:
        token = json.loads(app.admin_credential_path.read_text())["dashboard_token"]
        url = f"https://127.0.0.1:{app.dashboard_port}"
        credential = AdminCredential.load(app.admin_credential_path)
        async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as admin:
            for index in range(3):
                node = await start_node(
                    f"cam-{index}", tmp_path / f"n{index}", app, admin, (signing_keys[1],),
                    labels={"site": "lobby" if index < 2 else "dock"},
                )  # fmt: skip
                node.start_traffic()
                nodes.append(node)
            await wait_for(lambda: all(n.online() for n in nodes), 30, "agents online")
            source = build_model_dir(tmp_path / "build", MODEL, "1")
            bundle = build_bundle(source, MODEL, "2", load_private_key(signing_keys[0]), tmp_path)
            uploaded = await admin.upload_bundle(bundle)
            created = await admin.stub.CreateRollout(
                admin_pb2.CreateRolloutRequest(
                    bundle_sha256=uploaded.bundle_sha256, steps=[34, 67, 100], bake_s=120,
                    gates=["error_rate < 0.5"], min_devices=1, min_requests=1,
                    install_timeout_s=60,
                )
            )  # fmt: skip
            rollout_id = created.rollout.rollout_id

            async def baking(wave: int) -> bool:
                rollout = await rollout_state(admin, rollout_id)
                return bool(
                    rollout.state == STATE.ROLLOUT_STATE_BAKING and rollout.current_wave == wave
                )

            await wait_for(lambda: baking(0), 60, "wave 1 baking")
            # Each canary told the controller where its install stood, in order.
            for device_id in {device for device, _, _ in phases}:
                mine = [phase for device, version, phase in phases if device == device_id]
                assert mine == ["downloading", "verifying", "installing"], (device_id, phases)
                assert live.install_phase(device_id, MODEL, "2") == "installing"
            assert len({device for device, _, _ in phases}) == 2
            await asyncio.sleep(1.5)  # a few samples for the charts

            browser = await Browser(tmp_path / "chromium").start()
            await browser.goto(f"{url}/login#token={token}")

            async def on(selector: str) -> bool:
                found = await browser.poll(
                    f"location.pathname === '/' && !!document.querySelector({selector!r})"
                )
                return bool(found)

            await wait_for(lambda: on(f"[data-rollout='{rollout_id}'] .bake"), 30, "the page")
            # The session cookie is not the token, and the page never shows the token.
            html = await browser.evaluate("document.documentElement.outerHTML")
            assert token not in html
            missing = [
                name
                for name, selector in ELEMENTS.items()
                if not await browser.evaluate(f"!!document.querySelector({selector!r})")
            ]
            assert not missing, missing
            states = await browser.evaluate(
                "[...document.querySelectorAll('.wave-devices li')].map(li => li.dataset.state)"
            )
            # 34% of three devices: two in wave 1, one waiting for wave 2, none left for 3.
            assert sorted(states) == ["active", "active", "waiting"], states
            axis = await browser.evaluate(
                "[...document.querySelectorAll('figure[data-metric=ms] text')]"
                ".map(t => t.textContent)"
            )
            assert "ms" in axis and "now" in axis, axis
            await browser.send(
                "Emulation.setDeviceMetricsOverride", width=1400, height=1000,
                deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            # The screenshot shows every element: its region is drawn, not blank.
            boxes = await browser.evaluate(
                "Object.fromEntries(Object.entries(" + json.dumps(ELEMENTS) + ").map(([k, s]) =>"
                " {const r = document.querySelector(s).getBoundingClientRect();"
                " return [k, {x: r.x + scrollX, y: r.y + scrollY, width: r.width,"
                " height: r.height}]}))"
            )
            png = await browser.screenshot()
            (tmp_path / "dashboard.png").write_bytes(png)
            assert png.startswith(b"\x89PNG")
            undrawn = [
                name
                for name, box in boxes.items()
                if box["width"] < 1 or box["height"] < 1 or _blank(png, box)
            ]
            assert not undrawn, (undrawn, boxes)

            # The filters and the pagination run on the server.
            await browser.goto(f"{url}/?label=site%3Ddock")
            await wait_for(lambda: on("#devices tbody tr"), 10, "the filtered list")
            rows = await browser.evaluate(
                "[...document.querySelectorAll('#devices tbody tr')].map(r => r.dataset.device)"
            )
            assert rows == ["cam-2"], rows
            await browser.goto(f"{url}/")
            await wait_for(lambda: on("button[data-verb=pause]"), 10, "the buttons")

            # A POST without the session's CSRF token is refused.
            status = await browser.evaluate(
                f"fetch('/rollouts/{rollout_id}/abort', {{method: 'POST'}}).then(r => r.status)"
            )
            assert status == 403
            assert (await rollout_state(admin, rollout_id)).state == STATE.ROLLOUT_STATE_BAKING

            # Pause: the rollout holds.
            await browser.evaluate("document.querySelector('button[data-verb=pause]').click()")
            paused = STATE.ROLLOUT_STATE_PAUSED
            await wait_for(lambda: _state_is(admin, rollout_id, paused), 15, "the rollout paused")
            await wait_for(lambda: on("button[data-verb=promote]"), 10, "the page again")
            assert not await browser.evaluate("!!document.querySelector('[data-verb=pause]')")
            # Promote: wave 1 passes and wave 2 installs and bakes.
            await browser.evaluate("document.querySelector('button[data-verb=promote]').click()")
            await wait_for(lambda: baking(1), 60, "wave 2 baking after promote")
            await wait_for(lambda: on("button[data-verb=abort]"), 10, "the page again")
            # Abort: everything rolls back; no wave is left "running".
            await browser.evaluate("document.querySelector('button[data-verb=abort]').click()")
            rolled_back = STATE.ROLLOUT_STATE_ROLLED_BACK
            await wait_for(
                lambda: _state_is(admin, rollout_id, rolled_back), 15, "the rollout aborted"
            )
            await wait_for(
                lambda: on(f"[data-rollout='{rollout_id}'][data-state=ROLLED_BACK]"),
                10, "the rolled-back rollout on the page",
            )  # fmt: skip
            article = await browser.evaluate(
                f"document.querySelector(\"[data-rollout='{rollout_id}']\").outerHTML"
            )
            assert "running" not in article and "installed" not in article, article
            # Wave 2 (67%) took the third device: all three go back.
            assert "rolled back · 3 of 3 devices returned" in article, article
            assert "button" not in article  # nothing left to press
            audit = await admin.stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest(limit=100))
            by_dashboard = [e.action for e in audit.entries if e.actor.startswith("dashboard:")]
            assert by_dashboard == ["rollout.pause", "rollout.promote", "rollout.abort"]

            # Sign out: the session ends.
            await browser.evaluate("document.querySelector('#logout button').click()")
            signed_out = "!!document.body && document.body.innerText.includes('Signed out')"
            await wait_for(lambda: browser.poll(signed_out), 10, "signed out")
            status = await browser.evaluate("fetch('/fragment').then(r => r.status)")
            assert status == 401
    finally:
        if browser is not None:
            await browser.stop()
        for node in nodes:
            await node.stop()
        await app.stop(0.2)


async def _state_is(admin: AdminClient, rollout_id: str, state: int) -> bool:
    return bool((await rollout_state(admin, rollout_id)).state == state)
