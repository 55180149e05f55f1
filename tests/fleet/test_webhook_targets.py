"""Webhook targets are restricted and dashboard sessions are short-lived, signed and valid on
every replica (issue 24, item 7)."""

from __future__ import annotations

import json
import socket
import ssl

import aiohttp
import grpc
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from fleet.controller.api.dashboard import COOKIE
from fleet.controller.api.sessions import DashboardSessions
from fleet.controller.app import ControllerApp
from fleet.controller.store.records import RolloutRecord, RolloutSpec, RolloutState
from fleet.controller.webhooks import WebhookSender, WebhookTargets, rollout_event
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import MODEL, controller_settings, wait_for
from testkit.fleet import signed_bundle as _bundle
from testkit.webhooks import Receiver

# Starts controllers, edge servers or services (PostgreSQL, Chromium): a system test.
pytestmark = pytest.mark.system

ROLLOUT = RolloutRecord(
    rollout_id="r1", model_name=MODEL, version="2", bundle_size=1, created_at=0.0,
    updated_at=0.0, state=RolloutState.BAKING,
    spec=RolloutSpec(bundle_sha256="a" * 64, steps=[100], bake_s=1),
)  # fmt: skip


def test_targets_allow_http_urls_of_allowed_hosts_only():
    targets = WebhookTargets(
        ["https://ops.example.com/hook"], ["*.hooks.example.com", "10.0.0.7:8080"]
    )
    assert targets.refusal("https://ops.example.com/hook") is None
    assert targets.refusal("https://ops.example.com/other") is None  # a --webhook host
    assert targets.refusal("https://a.hooks.example.com/x") is None
    assert targets.refusal("http://10.0.0.7:8080/x") is None
    for refused, why in [
        ("ftp://a.hooks.example.com/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://127.0.0.1:9000/internal-admin/delete?all=1", "not allowed"),
        ("http://10.0.0.7:8081/x", "not allowed"),
        ("http://ops.example.com/hook", "not allowed"),  # another port than the --webhook
        ("https://user:pw@a.hooks.example.com/x", "credentials"),
        ("http://[::1", "not a URL"),
    ]:
        reason = targets.refusal(refused)
        assert reason is not None and why in reason, (refused, reason)
    # No patterns, no global URLs: a rollout's own URL goes nowhere.
    assert "not allowed" in (WebhookTargets().refusal("https://example.com/") or "")


async def _redirector(target: str) -> tuple[web.AppRunner, str, list[str]]:
    """A receiver that answers every POST with a 307 to `target`."""
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPTemporaryRedirect(target)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, listener).start()
    return runner, f"http://127.0.0.1:{listener.getsockname()[1]}/hook", hits


async def test_redirects_are_not_followed_and_idle_receivers_go_away():
    victim = await Receiver().start()
    runner, url, hits = await _redirector(victim.url)
    registry = CollectorRegistry()
    sender = WebhookSender(
        [], registry, queue_size=10, attempts=3, backoff_s=0.01, timeout_s=5,
        allow=["127.0.0.1:*"], idle_s=0.3,
    )  # fmt: skip
    try:
        sender.publish(rollout_event(ROLLOUT, "rollout.verdict", {}), url)
        assert sender.receivers == 1
        failed = ("edgefleet_controller_webhook_events_total", {"outcome": "failed"})
        await wait_for(lambda: registry.get_sample_value(*failed) == 1, 10, "a failed delivery")
        # The 307 was neither followed (the victim heard nothing) nor retried.
        assert hits == ["/hook"] and victim.attempts == []
        # An idle receiver's queue and sender go away; the next event makes new ones.
        await wait_for(lambda: sender.receivers == 0, 5, "the idle sender to go away")
        sender.publish(rollout_event(ROLLOUT, "rollout.succeeded", {}), victim.url)
        await wait_for(lambda: victim.names() == ["rollout.succeeded"], 10, "a new sender")
        # A target not allowed is refused at publish time and counted.
        sender.publish(rollout_event(ROLLOUT, "rollout.succeeded", {}), "http://[::1]:1/x")
        refused = ("edgefleet_controller_webhook_events_total", {"outcome": "refused"})
        assert registry.get_sample_value(*refused) == 1
    finally:
        await sender.stop()
        await runner.cleanup()
        await victim.stop()


async def test_a_rollout_webhook_outside_the_allow_list_is_refused(tmp_path, signing_keys):
    app = ControllerApp(
        controller_settings(
            tmp_path / "c", signing_keys[1].parent, webhook_allow=("hooks.example.com",)
        )
    )
    await app.start()
    try:
        credential = AdminCredential.load(app.admin_credential_path)
        async with AdminClient.connect(credential, f"127.0.0.1:{app.port}") as admin:
            v2 = await admin.upload_bundle(_bundle(tmp_path, signing_keys[0], "2", seed="2"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.stub.CreateRollout(
                    admin_pb2.CreateRolloutRequest(
                        bundle_sha256=v2.bundle_sha256, steps=[100], bake_s=1,
                        webhook_url="http://127.0.0.1:9/internal-admin/delete?all=1",
                    )
                )  # fmt: skip
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--webhook-allow" in (refused.value.details() or "")
            listed = await admin.stub.ListRollouts(admin_pb2.ListRolloutsRequest())
            assert not listed.rollouts
    finally:
        await app.stop(0.1)


def test_sessions_expire_and_cannot_be_forged():
    now = [1000.0]
    sessions = DashboardSessions(b"k" * 32, ttl_s=60, clock=lambda: now[0])
    cookie, session = sessions.issue()
    assert sessions.verify(cookie) == session
    assert sessions.verify(cookie[:-2] + "xx") is None
    # A later expiry under the same signature: refused.
    assert sessions.verify(cookie.replace(cookie.split(".")[0], "9999999999", 1)) is None
    assert DashboardSessions(b"o" * 32).verify(cookie) is None  # another fleet's key
    assert sessions.csrf_ok(session, sessions.csrf_token(session))
    assert not sessions.csrf_ok(session, "")
    now[0] += 31
    assert sessions.renewal_due(session)
    renewed_cookie, renewed = sessions.issue(renewing=session)
    # Renewed: a later expiry, the same id and so the same CSRF token for the open page.
    assert renewed.session_id == session.session_id and renewed.expires_at > session.expires_at
    assert sessions.csrf_ok(renewed, sessions.csrf_token(session))
    assert sessions.verify(renewed_cookie) == renewed
    now[0] += 30
    assert sessions.verify(cookie) is None  # expired


async def test_a_dashboard_session_works_on_every_replica_and_signs_out(tmp_path, signing_keys):
    """Two controllers sharing one CA (the replicas' setup): a session from one is valid on the
    other; it is not the dashboard token; POSTs need its CSRF token; sign-out clears it."""
    apps = []
    for name in ("a", "b"):
        app = ControllerApp(
            controller_settings(
                tmp_path / name, signing_keys[1].parent, dashboard_port=0,
                ca_dir=tmp_path / "ca",
            )
        )  # fmt: skip
        await app.start()
        apps.append(app)
    a, b = apps
    try:
        token = json.loads(a.admin_credential_path.read_text())["dashboard_token"]
        assert token != json.loads(b.admin_credential_path.read_text())["dashboard_token"]
        tls = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
        # No cookie jar: cookies are handed over by hand, as a load balancer's client would.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls), cookie_jar=aiohttp.DummyCookieJar()
        ) as web_client:
            base_a = f"https://localhost:{a.dashboard_port}"
            base_b = f"https://localhost:{b.dashboard_port}"
            signed_in = await web_client.post(f"{base_a}/login", data={"token": token})
            assert signed_in.status == 200
            morsel = signed_in.cookies[COOKIE]
            cookie = morsel.value
            assert token not in cookie and morsel["httponly"] and morsel["secure"]
            assert morsel["samesite"] == "Strict" and 0 < int(morsel["max-age"]) <= 3600
            jar = {COOKIE: cookie}
            for base in (base_a, base_b):
                page = await web_client.get(f"{base}/fragment", cookies=jar)
                assert page.status == 200, base
            # The token itself is no session cookie.
            assert (
                await web_client.get(f"{base_b}/fragment", cookies={COOKIE: token})
            ).status == 401
            home = await (await web_client.get(f"{base_b}/", cookies=jar)).text()
            csrf = home.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
            # Sign out on b: refused without the CSRF token or from another origin.
            assert (await web_client.post(f"{base_b}/logout", cookies=jar)).status == 403
            foreign = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
            assert (
                await web_client.post(f"{base_b}/logout", cookies=jar, headers=foreign)
            ).status == 403
            out = await web_client.post(f"{base_b}/logout", cookies=jar, data={"csrf": csrf})
            assert out.status == 200 and out.cookies[COOKIE].value == ""
            # A session of another fleet (another CA) is refused.
            other, _ = DashboardSessions(b"x" * 32).issue()
            assert (
                await web_client.get(f"{base_a}/fragment", cookies={COOKIE: other})
            ).status == 401
    finally:
        for app in apps:
            await app.stop(0.1)
