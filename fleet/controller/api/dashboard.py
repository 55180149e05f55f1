"""The fleet dashboard: server-rendered HTML over HTTPS (the controller's own certificate), for
operators who run a rollout from it (the HTML itself is dashboard_pages.py):

- devices: searched and filtered (label, state, version) and paginated on the server, so the
  list stays usable at 10,000 devices; online, desired vs active version, fps / p95 / errors,
  the last install problem;
- rollouts: state and progress, each wave's devices with their deployment state (waiting,
  installing, active, failed with its reason, timed out, rolled back), the bake countdown, the
  replica driving it and its takeovers, every gate measurement against its threshold, and the
  promote / pause / abort buttons (audited as the signed-in operator's actions);
- telemetry: fps, p95 latency and error-rate charts with labelled axes, per version cohort and
  per device on the current page;
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
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from fleet.controller.api import dashboard_pages as pages
from fleet.controller.api.dashboard_pages import DevicePage, DeviceQuery, RolloutFacts
from fleet.controller.api.sessions import DashboardSessions, Session
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import AuditRecord, DeviceRecord, RolloutRecord
from fleet.errors import Conflict, FleetError, InvalidRequest, NotFound

if TYPE_CHECKING:
    from fleet.controller.audit import AuditLog
    from fleet.controller.devices import DeviceRegistry
    from fleet.controller.live import LiveFleet, TelemetrySample
    from fleet.controller.rollouts.queries import RolloutQueries
    from fleet.controller.rollouts.verbs import RolloutVerbs
    from fleet.controller.store.runner import StoreRunner

logger = logging.getLogger(__name__)
COOKIE = "edgefleet_dashboard"
# The request's browser session (None for a Bearer request).
SESSION = web.RequestKey("session", object)
REFRESH_S = 2.0
# Rollouts shown: every unfinished one and the latest few.
RECENT_ROLLOUTS = 3
# Version cohorts' charts average at most this many devices each.
COHORT_CHART_DEVICES = 200
VERBS = ("promote", "pause", "abort")
HTTP_ERRORS: dict[type[FleetError], type[web.HTTPException]] = {
    NotFound: web.HTTPNotFound,
    Conflict: web.HTTPConflict,
    InvalidRequest: web.HTTPBadRequest,
}


class FleetView(Protocol):
    """What the dashboard reads from the controller, and the verbs it may use."""

    async def device_page(self, query: DeviceQuery) -> DevicePage: ...
    def record(self, device_id: str) -> DeviceRecord | None: ...
    def rollouts(self) -> list[RolloutRecord]: ...
    async def facts(self, rollout: RolloutRecord) -> RolloutFacts: ...
    async def audit(self, limit: int) -> list[AuditRecord]: ...
    def samples(self, device_id: str, window_s: float) -> list[TelemetrySample]: ...
    def install_phase(self, device_id: str, model: str, version: str) -> str: ...
    async def act(self, verb: str, rollout_id: str, actor: str) -> RolloutRecord: ...


class ControllerView:
    """FleetView over the in-process controller's services."""

    def __init__(
        self,
        devices: DeviceRegistry,
        rollouts: RolloutQueries,
        audit: AuditLog,
        live: LiveFleet,
        verbs: RolloutVerbs,
        store: StoreRunner,
    ) -> None:
        self._devices = devices
        self._rollouts = rollouts
        self._audit = audit
        self._live = live
        self._verbs = verbs
        self._store = store

    async def device_page(self, query: DeviceQuery) -> DevicePage:
        devices = self._devices
        records = devices.records()
        updating: set[str] = set()
        failed: set[str] = set()
        if query.state in ("updating", "failed"):
            for entry in await self._store.run(Store.all_desired):
                record = devices.records_by_id().get(entry.device_id)
                if record is not None and record.active_versions.get(entry.model) != entry.version:
                    updating.add(entry.device_id)
                if entry.last_error:
                    failed.add(entry.device_id)
        matched = pages.select_devices(
            records, query, devices.online, updating.__contains__, failed.__contains__
        )
        first = (query.page - 1) * pages.PAGE_SIZE
        shown = [record.device_id for record in matched[first : first + pages.PAGE_SIZE]]
        return DevicePage(
            views=await devices.views_of(shown),
            query=query,
            matching=len(matched),
            fleet=len(records),
            online=sum(devices.online(record.device_id) for record in records),
        )

    def record(self, device_id: str) -> DeviceRecord | None:
        return self._devices.records_by_id().get(device_id)

    def rollouts(self) -> list[RolloutRecord]:
        return self._rollouts.list_rollouts()

    async def facts(self, rollout: RolloutRecord) -> RolloutFacts:
        rollout_id = rollout.rollout_id
        driver = ""
        if not rollout.state.finished:
            holders = await self._store.run(Store.lease_holders, f"rollout:{rollout_id}")
            driver = holders[0] if holders else ""
        takeovers = [
            entry
            for entry in await self._audit.entries(500)
            if entry.action == "rollout.takeover" and entry.detail.get("rollout") == rollout_id
        ]
        return RolloutFacts(await self._rollouts.measurements(rollout_id), driver, takeovers)

    async def audit(self, limit: int) -> list[AuditRecord]:
        return await self._audit.entries(limit)

    def samples(self, device_id: str, window_s: float) -> list[TelemetrySample]:
        live = self._live
        latest = live.latest(device_id)
        if latest is None:
            return []
        # Connected here or to another replica (its samples followed from the store).
        return live.recent(device_id, latest.at - window_s)

    def install_phase(self, device_id: str, model: str, version: str) -> str:
        return self._live.install_phase(device_id, model, version)

    async def act(self, verb: str, rollout_id: str, actor: str) -> RolloutRecord:
        if verb == "promote":
            return await self._verbs.promote(actor, rollout_id)
        if verb == "pause":
            return await self._verbs.pause(actor, rollout_id)
        if verb == "abort":
            return await self._verbs.abort(actor, rollout_id, "aborted from the dashboard")
        raise InvalidRequest(f"no verb {verb!r}")


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
        app.router.add_post("/rollouts/{rollout_id}/{verb}", self._act)
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
            self._set_session(response, self._sessions.issue(renewing=session)[0])
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
        session = request.get(SESSION)
        csrf = self._sessions.csrf_token(session) if isinstance(session, Session) else ""
        query = DeviceQuery.parse(request.query)
        body = await self.render(query, csrf)
        signed_in = (
            f'<meta name="csrf-token" content="{pages.e(csrf)}">'
            '<form id="logout" method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{pages.e(csrf)}">'
            "<button>Sign out</button></form>"
        )
        return web.Response(
            text=PAGE_HEAD + signed_in + pages.filter_form(query) + MAIN_OPEN + body + PAGE_TAIL,
            content_type="text/html",
        )

    async def _fragment(self, request: web.Request) -> web.Response:
        session = request.get(SESSION)
        csrf = self._sessions.csrf_token(session) if isinstance(session, Session) else ""
        body = await self.render(DeviceQuery.parse(request.query), csrf)
        return web.Response(text=body, content_type="text/html")

    async def _act(self, request: web.Request) -> web.StreamResponse:
        """promote / pause / abort, from a signed-in session (CSRF checked by the guard) or
        a Bearer script; audited as `dashboard:<session>`."""
        verb, rollout_id = request.match_info["verb"], request.match_info["rollout_id"]
        if verb not in VERBS:
            raise web.HTTPNotFound(text=f"no verb {verb}")
        session = request.get(SESSION)
        actor = (
            f"dashboard:{session.session_id[:8]}"
            if isinstance(session, Session)
            else "dashboard:token"
        )
        try:
            rollout = await self._view.act(verb, rollout_id, actor)
        except FleetError as error:
            http = HTTP_ERRORS.get(type(error), web.HTTPConflict)
            raise http(text=str(error)) from None
        logger.info("dashboard: %s %s rollout %s", actor, verb, rollout_id)
        if request.headers.get("Accept", "").startswith("application/json"):
            return web.json_response({"rollout": rollout.rollout_id, "state": rollout.state})
        raise web.HTTPSeeOther("/")

    async def render(self, query: DeviceQuery | None = None, csrf: str = "") -> str:
        view = self._view
        query = query or DeviceQuery()
        page = await view.device_page(query)
        everything = view.rollouts()
        recent = {r.rollout_id for r in everything[-RECENT_ROLLOUTS:]}
        shown = [r for r in reversed(everything) if r.rollout_id in recent or not r.state.finished]
        facts = {rollout.rollout_id: await view.facts(rollout) for rollout in shown}
        audit = await view.audit(30)
        cohorts: dict[str, list[str]] = {}
        for rollout in shown[:1]:
            # The newest rollout's devices, by the version they serve: old and new cohorts.
            for device_id in rollout.eligible:
                record = view.record(device_id)
                version = record.active_versions.get(rollout.model_name) if record else None
                if version is not None:
                    members = cohorts.setdefault(f"{rollout.model_name} v{version}", [])
                    if len(members) < COHORT_CHART_DEVICES:
                        members.append(device_id)
        page_ids = [device.record.device_id for device in page.views]
        return "\n".join(
            [
                f'<p class="stamp">updated {time.strftime("%H:%M:%S", time.gmtime())} UTC ·'
                f" {page.fleet} devices, {page.online} online · {len(everything)} rollouts</p>",
                pages.rollouts_section(shown, facts, view.record, csrf, phase=view.install_phase),
                pages.devices_table(page),
                pages.charts_section(page_ids, cohorts, view.samples),
                pages.audit_table(audit),
            ]
        )


STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#1f2328}
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #d0d7de;
padding:3px 8px;text-align:left}tr.offline{color:#8c959f}.PASS b{color:#1a7f37}
.FAIL b{color:#cf222e}.INCONCLUSIVE b{color:#9a6700}.charts{display:flex;flex-wrap:wrap;gap:1em;
margin:.5em 0}figure{margin:0}figcaption{font-size:12px}.stamp{color:#57606a}
svg{background:#f6f8fa}svg text{font-size:9px;fill:#57606a}#logout{float:right}
.buttons form{display:inline;margin-right:.5em}.buttons button{font-size:14px;padding:4px 14px}
.deploy{font-weight:600}.deploy.active{color:#1a7f37}.deploy.failed,.deploy.timed-out{color:#cf222e}
.deploy.installing,.deploy.rolling-back,.deploy.downloading,.deploy.verifying,
.deploy.smoke-test{color:#9a6700}.wave-devices{columns:3;font-size:12px}
.bake .left{font-size:16px}.problem{color:#cf222e}.pager{margin:.5em 0}
"""

PAGE_HEAD = (
    "<!doctype html><html lang=en><head><meta charset=utf-8><title>edgefleet fleet</title>"
    f"<style>{STYLE}</style></head><body><h1>edgefleet fleet</h1>"
)
MAIN_OPEN = '<main id="main">'
# Refresh the main section (keeping the list's filters and page); tick the bake countdown.
PAGE_TAIL = (
    "</main><script>"
    "setInterval(async()=>{try{const r=await fetch('/fragment'+location.search,"
    "{credentials:'same-origin'});"
    "if(r.ok){document.getElementById('main').innerHTML=await r.text()}"
    "else if(r.status===401){location.replace('/login')}}catch(e){}},"
    f"{int(REFRESH_S * 1000)});"
    "setInterval(()=>{for(const b of document.querySelectorAll('.bake')){"
    "const left=Math.max(0,b.dataset.ends-Date.now()/1000);"
    "b.querySelector('.left').textContent=left.toFixed(0)+' s'}},1000);"
    "</script></body></html>"
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
