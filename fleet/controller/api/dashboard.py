"""The fleet dashboard: server-rendered HTML over HTTPS (the controller's own certificate), for
operators who want to watch a rollout rather than poll `fleetctl`.

- devices: labels, online, desired vs active version, live fps / p95 latency / errors;
- rollouts: state, wave progress, every gate measurement against its threshold, verdicts;
- telemetry: an fps chart per device and per cohort (devices on the same version);
- the audit log.

The page refreshes its main section every few seconds (`/fragment`, polling: no JavaScript
library, nothing vendored). Admin authentication: the dashboard token in the controller's admin
credential file (0600, beside fleetctl's certificate). A browser signs in once at
`/login#token=...` (the fragment never reaches a server log; the page posts it) and gets an
HttpOnly, Secure, SameSite=Strict session cookie: a short-lived signed session valid on every
replica (sessions.py), never the token itself; `POST /logout` signs out. Every POST from a
session carries its CSRF token. Scripts may send `Authorization: Bearer <token>` instead.
Off unless `--dashboard-port` is given.
"""

from __future__ import annotations

import hmac
import html
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from fleet.controller.api.sessions import DashboardSessions, Session
from fleet.controller.store.records import AuditRecord, Measurement, RolloutRecord

if TYPE_CHECKING:
    from fleet.controller.audit import AuditLog
    from fleet.controller.devices import DeviceRegistry, DeviceView
    from fleet.controller.live import LiveFleet, TelemetrySample
    from fleet.controller.rollouts.queries import RolloutQueries

logger = logging.getLogger(__name__)
COOKIE = "edgefleet_dashboard"
# The request's browser session (None for a Bearer request).
SESSION = web.RequestKey("session", object)
REFRESH_S = 2.0
CHART_WINDOW_S = 300.0


class FleetView(Protocol):
    """What the dashboard reads from the controller."""

    async def devices(self) -> list[DeviceView]: ...
    def rollouts(self) -> list[RolloutRecord]: ...
    async def measurements(self, rollout_id: str) -> list[Measurement]: ...
    async def audit(self, limit: int) -> list[AuditRecord]: ...
    def samples(self, device_id: str, window_s: float) -> list[TelemetrySample]: ...


class ControllerView:
    """FleetView over the in-process controller's services."""

    def __init__(
        self, devices: DeviceRegistry, rollouts: RolloutQueries, audit: AuditLog, live: LiveFleet
    ) -> None:
        self._devices = devices
        self._rollouts = rollouts
        self._audit = audit
        self._live = live

    async def devices(self) -> list[DeviceView]:
        return await self._devices.views({})

    def rollouts(self) -> list[RolloutRecord]:
        return self._rollouts.list_rollouts()

    async def measurements(self, rollout_id: str) -> list[Measurement]:
        return await self._rollouts.measurements(rollout_id)

    async def audit(self, limit: int) -> list[AuditRecord]:
        return await self._audit.entries(limit)

    def samples(self, device_id: str, window_s: float) -> list[TelemetrySample]:
        live = self._live
        latest = live.latest(device_id)
        if latest is None:
            return []
        # Connected here or to another replica (its samples followed from the store).
        return live.recent(device_id, latest.at - window_s)


class Dashboard:
    def __init__(self, view: FleetView, token: str, sessions: DashboardSessions) -> None:
        self._view = view
        self._token = token
        self._sessions = sessions
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _bearer(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        offered = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
        return bool(offered) and hmac.compare_digest(offered.encode(), self._token.encode())

    def _session(self, request: web.Request) -> Session | None:
        return self._sessions.verify(request.cookies.get(COOKIE, ""))

    def _csrf_ok(self, request: web.Request, session: Session, form_value: str = "") -> bool:
        """A POST from a browser session: its CSRF token, and (when the browser says) from
        this very origin."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"https://{request.host}":
            return False
        offered = request.headers.get("X-CSRF-Token", "") or form_value
        return self._sessions.csrf_ok(session, offered)

    def _set_session(self, response: web.StreamResponse, cookie: str) -> None:
        response.set_cookie(
            COOKIE, cookie, httponly=True, secure=True, samesite="Strict", path="/",
            max_age=int(self._sessions.ttl_s),
        )  # fmt: skip

    async def start(self, host: str, port: int, tls: ssl.SSLContext) -> int:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/fragment", self._fragment)
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        listener = socket.create_server((host, port))
        self.port = int(listener.getsockname()[1])
        await web.SockSite(self._runner, listener, ssl_context=tls).start()
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        session = self._session(request)
        if request.path != "/login" and session is None and not self._bearer(request):
            if request.path == "/":
                raise web.HTTPFound("/login")
            raise web.HTTPUnauthorized(text="sign in at /login")
        browser_post = request.method == "POST" and request.path != "/login"
        if browser_post and session is not None and not self._bearer(request):
            form = await request.post()
            if not self._csrf_ok(request, session, str(form.get("csrf", ""))):
                logger.warning("dashboard: refused a POST without its CSRF token")
                raise web.HTTPForbidden(text="missing or wrong CSRF token")
        request[SESSION] = session
        response = await handler(request)
        if (
            session is not None
            and request.path != "/logout"
            and self._sessions.renewal_due(session)
        ):
            # The page is open: the session slides on, one short lifetime at a time.
            self._set_session(response, self._sessions.issue()[0])
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline';"
            " connect-src 'self'; img-src 'self' data:; form-action 'self'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        return response

    async def _login_page(self, request: web.Request) -> web.Response:
        return web.Response(text=LOGIN_PAGE, content_type="text/html")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        offered = str(form.get("token", ""))
        if not hmac.compare_digest(offered.encode(), self._token.encode()):
            logger.warning("dashboard: refused a sign-in from %s", request.remote)
            raise web.HTTPUnauthorized(text="wrong dashboard token")
        response = web.Response(text="signed in")
        self._set_session(response, self._sessions.issue()[0])
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        response = web.Response(
            text='<!doctype html><p>Signed out. <a href="/login">Sign in</a></p>',
            content_type="text/html",
        )
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def _page(self, request: web.Request) -> web.Response:
        body = await self.render()
        session = request.get(SESSION)
        csrf = self._sessions.csrf_token(session) if isinstance(session, Session) else ""
        signed_in = (
            f'<meta name="csrf-token" content="{_e(csrf)}">'
            '<form id="logout" method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            "<button>Sign out</button></form>"
        )
        return web.Response(
            text=PAGE_HEAD + signed_in + MAIN_OPEN + body + PAGE_TAIL, content_type="text/html"
        )

    async def _fragment(self, request: web.Request) -> web.Response:
        return web.Response(text=await self.render(), content_type="text/html")

    async def render(self) -> str:
        view = self._view
        devices = await view.devices()
        rollouts = view.rollouts()
        measured = {r.rollout_id: await view.measurements(r.rollout_id) for r in rollouts[-3:]}
        audit = await view.audit(30)
        online = sum(device.online for device in devices)
        return "\n".join(
            [
                f'<p class="stamp">updated {time.strftime("%H:%M:%S", time.gmtime())} UTC ·'
                f" {len(devices)} devices, {online} online · {len(rollouts)} rollouts</p>",
                _devices_table(devices),
                _rollouts_section(rollouts, measured),
                _charts(devices, view),
                _audit_table(audit),
            ]
        )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _figure(value: float, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _devices_table(devices: Sequence[DeviceView]) -> str:
    rows = []
    for device in devices:
        record = device.record
        desired = {entry.model: entry for entry in device.desired}
        models = sorted(set(record.active_versions) | set(desired))
        versions = ", ".join(
            f"{_e(m)} v{_e(record.active_versions.get(m, '?'))}"
            + (
                f" → v{_e(desired[m].version)}"
                if m in desired and desired[m].version != record.active_versions.get(m)
                else ""
            )
            for m in models
        )
        fps = p95 = errors = ""
        if device.latest is not None:
            figures = device.latest.record.models
            fps = " / ".join(_figure(model.fps) for model in figures)
            p95 = " / ".join(_figure(model.latency_p95_ms) for model in figures)
            errors = " / ".join(str(model.errors) for model in figures)
        labels = " ".join(f"{_e(k)}={_e(v)}" for k, v in sorted(record.labels.items()))
        state = "online" if device.online else "offline"
        rows.append(
            f'<tr data-device="{_e(record.device_id)}" class="{state}">'
            f"<td>{_e(record.device_id)}</td><td>{labels}</td><td>{state}</td>"
            f"<td>{versions}</td><td>{fps}</td><td>{p95}</td><td>{errors}</td></tr>"
        )
    return (
        '<section id="devices"><h2>Devices</h2><table><thead><tr><th>device</th><th>labels</th>'
        "<th>state</th><th>version (active → desired)</th><th>fps</th><th>p95 ms</th>"
        f"<th>errors</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _rollouts_section(
    rollouts: Sequence[RolloutRecord], measured: dict[str, list[Measurement]]
) -> str:
    parts = ['<section id="rollouts"><h2>Rollouts</h2>']
    if not rollouts:
        parts.append("<p>No rollouts yet.</p>")
    for rollout in reversed(rollouts[-3:]):
        installed = sum(state == "INSTALLED" for state in rollout.installs.values())
        waves = []
        for wave in rollout.waves:
            verdict = wave.verdict.value if wave.verdict else (
                "running" if wave.index == rollout.current_wave else "waiting"
            )  # fmt: skip
            waves.append(
                f'<li data-wave="{wave.index}" class="wave {_e(verdict)}">wave {wave.index + 1}:'
                f" {wave.percent:g}% · {len(wave.devices)} devices · <b>{_e(verdict)}</b>"
                f"{' · ' + _e(wave.reason) if wave.reason else ''}</li>"
            )
        why = "".join(
            f'<tr class="{_e(m.verdict.value)}"><td>{m.wave + 1}</td><td>{_e(m.gate)}</td>'
            f"<td>{_figure(m.canary_value, 2)}</td><td>{_figure(m.baseline_value, 2)}</td>"
            f"<td>{_figure(m.threshold, 2)}</td><td>{m.canary_devices}/{m.baseline_devices}</td>"
            f"<td><b>{_e(m.verdict.value)}</b></td><td>{_e(m.note)}</td></tr>"
            for m in measured.get(rollout.rollout_id, [])
        )
        parts.append(
            f'<article class="rollout" data-rollout="{_e(rollout.rollout_id)}">'
            f"<h3>{_e(rollout.model_name)} v{_e(rollout.version)} · {_e(rollout.rollout_id)} ·"
            f' <span class="state">{_e(rollout.state.value)}</span></h3>'
            f"<p>wave {min(rollout.current_wave + 1, len(rollout.waves))} of"
            f" {len(rollout.waves)} · {installed}/{len(rollout.eligible)} devices installed"
            f"{' · ' + _e(rollout.reason) if rollout.reason else ''}</p>"
            f'<ol class="waves">{"".join(waves)}</ol>'
            '<table class="why"><thead><tr><th>wave</th><th>gate</th><th>canary</th>'
            "<th>baseline</th><th>threshold</th><th>devices</th><th>verdict</th><th>note</th>"
            f"</tr></thead><tbody>{why}</tbody></table></article>"
        )
    parts.append("</section>")
    return "".join(parts)


def _polyline(points: Sequence[tuple[float, float]], t0: float, span: float, top: float) -> str:
    width, height = 300.0, 60.0
    coords = " ".join(
        f"{(t - t0) / span * width:.1f},{height - value / top * height:.1f}" for t, value in points
    )
    return f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{coords}"/>'


def _chart(title: str, points: Sequence[tuple[float, float]], t0: float, now: float) -> str:
    top = max((value for _, value in points), default=1.0) * 1.2 or 1.0
    span = max(now - t0, 1.0)
    last = _figure(points[-1][1]) if points else "–"
    return (
        f'<figure class="chart"><figcaption>{_e(title)}: {last} fps</figcaption>'
        '<svg viewBox="0 0 300 60" width="300" height="60" role="img">'
        f"{_polyline(points, t0, span, top) if points else ''}</svg></figure>"
    )


def _charts(devices: Sequence[DeviceView], view: FleetView) -> str:
    series: dict[str, list[tuple[float, float]]] = {}
    cohorts: dict[str, dict[int, list[float]]] = {}
    now = max((s.at for d in devices for s in view.samples(d.record.device_id, 1)), default=0)
    # The x axis spans the samples held, up to the window: a young fleet's chart is not a sliver.
    oldest = min(
        (s.at for d in devices for s in view.samples(d.record.device_id, CHART_WINDOW_S)),
        default=now,
    )
    t0 = max(now - CHART_WINDOW_S, oldest)
    for device in devices:
        points = series.setdefault(device.record.device_id, [])
        for sample in view.samples(device.record.device_id, CHART_WINDOW_S):
            fps = sum(model.fps for model in sample.record.models)
            points.append((sample.at, fps))
            for model in sample.record.models:
                cohort = cohorts.setdefault(f"{model.name} v{model.version}", {})
                cohort.setdefault(int(sample.at), []).append(model.fps)
    cohort_charts = [
        _chart(f"cohort {name} (mean per device)",
               [(float(t), sum(v) / len(v)) for t, v in sorted(buckets.items())], t0, now)
        for name, buckets in sorted(cohorts.items())
    ]  # fmt: skip
    device_charts = [
        _chart(device_id, points, t0, now) for device_id, points in sorted(series.items())
    ]
    return (
        '<section id="telemetry"><h2>Telemetry (last 5 minutes)</h2>'
        f'<div class="charts">{"".join(cohort_charts)}</div>'
        f'<div class="charts">{"".join(device_charts)}</div></section>'
    )


def _audit_table(entries: Sequence[AuditRecord]) -> str:
    rows = "".join(
        f"<tr><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entry.at))}</td>"
        f"<td>{_e(entry.actor)}</td><td>{_e(entry.action)}</td>"
        f"<td>{_e(' '.join(f'{k}={v}' for k, v in entry.detail.items()))}</td></tr>"
        for entry in reversed(entries)
    )
    return (
        '<section id="audit"><h2>Audit log</h2><table><thead><tr><th>when (UTC)</th>'
        f"<th>actor</th><th>action</th><th>detail</th></tr></thead><tbody>{rows}</tbody>"
        "</table></section>"
    )


STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#1f2328}
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #d0d7de;
padding:3px 8px;text-align:left}tr.offline{color:#8c959f}.PASS b{color:#1a7f37}
.FAIL b{color:#cf222e}.INCONCLUSIVE b{color:#9a6700}.charts{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:12px}.stamp{color:#57606a}svg{background:#f6f8fa}
"""

PAGE_HEAD = (
    "<!doctype html><html lang=en><head><meta charset=utf-8><title>edgefleet fleet</title>"
    f"<style>{STYLE}</style></head><body><h1>edgefleet fleet</h1>"
)
MAIN_OPEN = '<main id="main">'
PAGE_TAIL = (
    "</main><script>"
    "setInterval(async()=>{try{const r=await fetch('/fragment',{credentials:'same-origin'});"
    "if(r.ok){document.getElementById('main').innerHTML=await r.text()}"
    "else if(r.status===401){location.replace('/login')}}catch(e){}},"
    f"{int(REFRESH_S * 1000)});</script></body></html>"
)

LOGIN_PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8><title>edgefleet sign in</title>"
    f"<style>{STYLE}</style></head><body><h1>edgefleet fleet</h1>"
    '<form id="login" method="post" action="/login"><label>Dashboard token'
    ' <input name="token" type="password" autocomplete="current-password"></label>'
    " <button>Sign in</button></form><p>The token is <code>dashboard_token</code> in the"
    " controller's admin-credential.json.</p><script>"
    "async function signIn(token){const r=await fetch('/login',{method:'POST',"
    "credentials:'same-origin',body:new URLSearchParams({token})});"
    "if(r.ok){location.replace('/')}else{document.body.append('wrong token')}}"
    "document.getElementById('login').addEventListener('submit',e=>{e.preventDefault();"
    "signIn(new FormData(e.target).get('token'))});"
    "const h=new URLSearchParams(location.hash.slice(1)).get('token');"
    "if(h){history.replaceState(null,'','/login');signIn(h)}"
    "</script></body></html>"
)
