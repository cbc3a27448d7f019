"""The operator's web console (``console:`` in the configuration): the relay's state and
an admin's actions, on the relay's own HTTP server (relay.web.server).

Handlers are thin: they read through relay.web.console.data and act through the functions
the CLI uses (relay.queueadmin, SuppressionList, EventStore.trace), so the console can do
nothing the commands cannot. Access rules: relay.web.console.access. Pages are Jinja2
templates (autoescaped); the overview refreshes itself through /api/overview.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.resources
import mimetypes
from typing import Any

import jinja2
from aiohttp import web

from relay import log, queueadmin
from relay.config import ConsoleConfig
from relay.events import story_lines
from relay.limits import AuthGuard
from relay.smtp.auth import Authenticator, Outcome
from relay.suppression import REASONS, SuppressionError
from relay.web.console import charts, data
from relay.web.console.access import LOOPBACK_NAMES, SESSION, Access, Sessions, session_of
from relay.web.server import WebServer

_log = log.get("console")
_PACKAGE = "relay.web.console"
_MAX_PASSWORD = 1024  # scrypt of anything longer is a denial of service, not a password


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


class Console:
    def __init__(self, config: ConsoleConfig, src: data.Sources, auth: Authenticator,
                 guard: AuthGuard) -> None:
        self._src = src
        self._auth = auth
        self._guard = guard
        self.access = Access(Sessions(config.session_timeout), tls=config.tls,
                             is_admin=self._is_admin,
                             hosts=None if config.tls else LOOPBACK_NAMES | {config.address})
        self._env = jinja2.Environment(loader=jinja2.PackageLoader(_PACKAGE, "templates"),
                                       autoescape=True, undefined=jinja2.StrictUndefined)
        self._env.filters.update(iso=_iso, age=_age)
        self._env.globals.update(rate_chart=charts.rate_chart,
                                 hourly_chart=charts.hourly_chart)
        static = importlib.resources.files(_PACKAGE) / "static"
        self._static = {p.name: p.read_bytes() for p in static.iterdir() if p.is_file()}

    def _is_admin(self, name: str) -> bool:
        user = self._src.users().get(name)
        return user is not None and user.admin

    def add_to(self, server: WebServer) -> None:
        routes = [
            ("GET", "/login", self.login_page), ("POST", "/login", self.login),
            ("POST", "/logout", self.logout),
            ("GET", "/static/{name}", self.static),
            ("GET", "/", self.overview), ("GET", "/api/overview", self.api_overview),
            ("GET", "/messages", self.messages),
            ("GET", "/queue", self.queue),
            ("GET", "/queue/{qid}/{action}", self.queue_confirm),
            ("POST", "/queue/{qid}/{action}", self.queue_act),
            ("GET", "/suppression", self.suppression),
            ("POST", "/suppression/add", self.suppression_add),
            ("GET", "/suppression/remove", self.suppression_confirm),
            ("POST", "/suppression/remove", self.suppression_remove),
            ("GET", "/reputation", self.reputation),
            ("POST", "/reputation/pause", self.pause),
            ("POST", "/reputation/resume", self.resume),
        ]
        for method, path, handler in routes:
            server.add_route(method, path, handler)

    # -- rendering

    def _page(self, request: web.Request, template: str, status: int = 200,
              **context: Any) -> web.Response:
        session = request.get(SESSION)
        flash: list[str] = []
        if session is not None:
            flash, session.flash = session.flash, []
        html = self._env.get_template(template).render(
            session=session, flash=flash, path=request.path, **context)
        return web.Response(status=status, text=html, content_type="text/html",
                            charset="utf-8")

    @staticmethod
    def _back(request: web.Request, location: str, note: str) -> web.Response:
        session_of(request).flash.append(note)
        raise web.HTTPSeeOther(location)

    @staticmethod
    async def _form(request: web.Request) -> dict[str, str]:
        return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}

    # -- login

    async def login_page(self, request: web.Request) -> web.Response:
        return self._page(request, "login.html", error=None)

    async def login(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        name, password = form.get("user", "").strip(), form.get("password", "")
        ip = request.remote or "unknown"
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = (ip, peername[1] if peername else 0)
        if len(password) > _MAX_PASSWORD:
            outcome = Outcome.INVALID
        else:
            outcome = await self._auth.verify(peer, ip, name, password.encode(), "console")
        if outcome is Outcome.LOCKED:
            return self._page(request, "login.html", status=429,
                              error="Too many failed logins from your address; try later.")
        if outcome is Outcome.OK and not self._is_admin(name):
            _log.warning("console_login_refused", user=name, ip=ip, reason="not an admin",
                         hint="`ses-relay user update NAME --admin` makes a user an admin")
            outcome = Outcome.INVALID
        if outcome is not Outcome.OK:
            return self._page(request, "login.html", status=401,
                              error="Wrong user name or password, or not an admin.")
        session = self.access.sessions.create(name)
        _log.info("console_login", user=name, ip=ip)
        response = web.HTTPSeeOther("/")
        self.access.set_cookie(response, session)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        session = session_of(request)
        self.access.sessions.end(session)
        _log.info("console_logout", user=session.user)
        response = web.HTTPSeeOther("/login")
        self.access.clear_cookie(response)
        raise response

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return web.Response(body=body, content_type=kind)

    # -- pages

    async def overview(self, request: web.Request) -> web.Response:
        return self._page(request, "overview.html", v=await data.overview(self._src))

    async def api_overview(self, request: web.Request) -> web.Response:
        view = await data.overview(self._src)
        html = self._env.get_template("_overview.html").render(v=view)
        return web.json_response({"html": html, "data": data.json_overview(view)})

    async def messages(self, request: web.Request) -> web.Response:
        key = request.query.get("q", "").strip()
        story: list[tuple[float, str, str]] = []
        queued = None
        if key:
            story = story_lines(await asyncio.to_thread(self._src.events.trace, key))
            if "@" not in key:
                queued = await asyncio.to_thread(queueadmin.show, self._src.spool, key)
        recent = [] if key else await asyncio.to_thread(self._src.events.recent, 100)
        return self._page(request, "messages.html", key=key, story=story, queued=queued,
                          recent=recent)

    async def queue(self, request: web.Request) -> web.Response:
        state, text = request.query.get("state", ""), request.query.get("q", "")
        rows = await data.queue_rows(self._src, state if state in queueadmin.STATES else "",
                                     text)
        return self._page(request, "queue.html", rows=rows, state=state, q=text,
                          states=queueadmin.STATES)

    async def queue_confirm(self, request: web.Request) -> web.Response:
        qid, action = request.match_info["qid"], request.match_info["action"]
        if action not in queueadmin.ACTIONS:
            raise web.HTTPNotFound
        shown = await asyncio.to_thread(queueadmin.show, self._src.spool, qid)
        return self._page(request, "confirm_queue.html", qid=qid, action=action, shown=shown)

    async def queue_act(self, request: web.Request) -> web.Response:
        qid, action = request.match_info["qid"], request.match_info["action"]
        if action not in queueadmin.ACTIONS:
            raise web.HTTPNotFound
        try:
            done = await asyncio.to_thread(queueadmin.act, self._src.spool, action, qid)
        except queueadmin.Refused as e:
            return self._back(request, "/queue", f"refused: {e}")
        _log.info("console_queue_action", user=session_of(request).user, action=action,
                  queue_id=qid)
        return self._back(request, "/queue", done)

    async def suppression(self, request: web.Request) -> web.Response:
        text = request.query.get("q", "").strip()
        entries = await asyncio.to_thread(self._src.suppression.search, text)
        return self._page(request, "suppression.html", entries=entries, q=text,
                          reasons=REASONS)

    async def suppression_add(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        user = session_of(request).user
        try:
            entry = await asyncio.to_thread(self._src.suppression.add,
                                            form.get("address", ""),
                                            form.get("reason", "manual"), f"console:{user}")
        except SuppressionError as e:
            return self._back(request, "/suppression", f"not added: {e}")
        _log.info("console_suppress", user=user, address=entry.address, reason=entry.reason)
        return self._back(request, "/suppression", f"suppressed {entry.address} "
                                                   f"({entry.reason})")

    async def suppression_confirm(self, request: web.Request) -> web.Response:
        address = request.query.get("address", "")
        entry = await asyncio.to_thread(self._src.suppression.lookup, address) \
            if "@" in address else None
        return self._page(request, "confirm_suppression.html", address=address, entry=entry)

    async def suppression_remove(self, request: web.Request) -> web.Response:
        address = (await self._form(request)).get("address", "")
        if not await asyncio.to_thread(self._src.suppression.remove, address):
            return self._back(request, "/suppression", f"{address} is not suppressed")
        _log.info("console_unsuppress", user=session_of(request).user, address=address)
        return self._back(request, "/suppression", f"removed {address.lower()}")

    async def reputation(self, request: web.Request) -> web.Response:
        return self._page(request, "reputation.html", v=await data.overview(self._src))

    async def pause(self, request: web.Request) -> web.Response:
        user = session_of(request).user
        reason = (await self._form(request)).get("reason", "").strip()[:200]
        reason = f"{reason or 'paused'} (by {user} in the console)"
        await asyncio.to_thread(queueadmin.pause, self._src.spool, reason)
        _log.warning("console_pause", user=user, reason=reason)
        return self._back(request, "/reputation", f"paused: {reason}")

    async def resume(self, request: web.Request) -> web.Response:
        was = await asyncio.to_thread(queueadmin.resume, self._src.spool)
        _log.info("console_resume", user=session_of(request).user, was=was)
        return self._back(request, "/reputation", f"resumed (was paused: {was})" if was
                          else "delivery was not paused")
