"""Who may see the console, and how every request is checked.

Sessions live in this process's memory only (a restart logs everyone out), under ids of
32 random bytes; a session ends after ``console.session_timeout`` without a request, or at
logout. Every request but the login page and the static files needs one: pages answer 303
to the login page without it, the JSON API 401. A request that changes something (any
method but GET and HEAD) must come from our own origin (Origin, or Referer when a browser
sends no Origin) and carry the session's CSRF token, compared in constant time. Every
answer says ``Cache-Control: no-store`` (addresses are personal data) and carries a strict
Content-Security-Policy: scripts and styles from the relay only, none inline, no framing.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from relay.web.server import Handler

MAX_SESSIONS = 256  # admins are few: past this, the least recently used session ends
_SAFE_METHODS = frozenset({"GET", "HEAD"})

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    expires: float
    flash: list[str] = field(default_factory=list)  # one-time notes for the next page


SESSION = web.RequestKey("session", Session)


class Sessions:
    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = timeout
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, user: str) -> Session:
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32),
                          self._clock() + self._timeout)
        self._by_id[session.id] = session
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its expiry pushed back), or None."""
        session = self._by_id.get(session_id) if session_id else None
        if session is None:
            return None
        now = self._clock()
        if session.expires < now:
            del self._by_id[session.id]
            return None
        session.expires = now + self._timeout
        self._by_id.move_to_end(session.id)
        return session

    def end(self, session: Session) -> None:
        self._by_id.pop(session.id, None)


class Access:
    """The console's middleware: sessions, same-origin and CSRF checks, headers."""

    def __init__(self, sessions: Sessions, *, tls: bool, is_admin: Callable[[str], bool],
                 hosts: frozenset[str] | None = None) -> None:
        """*hosts*: the only names the Host header may give (None: any). A console on the
        loopback answers only to loopback names, so that a page elsewhere cannot reach it
        under a name of its own that resolves to 127.0.0.1 (DNS rebinding), where it would
        get our login form and could spend the address's AUTH failures."""
        self.sessions = sessions
        self.tls = tls
        self._hosts = hosts
        self._is_admin = is_admin
        # __Host-: the browser keeps it only if Secure, for this host, for path / (it
        # cannot be set by a sibling domain). Without TLS (loopback) the plain name.
        self.cookie = "__Host-console" if tls else "console"

    def set_cookie(self, response: web.StreamResponse, session: Session) -> None:
        response.set_cookie(self.cookie, session.id, path="/", secure=self.tls,
                            httponly=True, samesite="Strict")

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(self.cookie, path="/", secure=self.tls, httponly=True,
                            samesite="Strict")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._checked(request, handler)
        except web.HTTPException as e:
            self._headers(e.headers)
            raise
        self._headers(response.headers)
        return response

    def _headers(self, headers: CIMultiDict[str]) -> None:
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
        headers["Content-Security-Policy"] = CSP
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        if self.tls:
            headers["Strict-Transport-Security"] = "max-age=31536000"

    async def _checked(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._hosts is not None and _hostname(request.host) not in self._hosts:
            return web.Response(status=421, text="this console answers to its own address "
                                                 "only\n")
        public = request.path == "/login" or request.path.startswith("/static/")
        changes = request.method not in _SAFE_METHODS
        if changes and not self.same_origin(request):
            return web.Response(status=403, text="cross-origin request refused\n")
        if public:
            return await handler(request)
        session = self.sessions.get(request.cookies.get(self.cookie))
        if session is not None and not self._is_admin(session.user):
            self.sessions.end(session)  # no longer an admin (or no longer a user)
            session = None
        if session is None:
            if request.path.startswith("/api/"):
                return web.json_response({"error": "not logged in"}, status=401)
            raise web.HTTPSeeOther("/login")
        if changes and not await self._csrf_ok(request, session):
            return web.Response(status=403, text="missing or wrong CSRF token; reload the "
                                                 "page and try again\n")
        request[SESSION] = session
        return await handler(request)

    def origin(self, request: web.Request) -> str:
        return f"{'https' if self.tls else 'http'}://{request.host}"

    def same_origin(self, request: web.Request) -> bool:
        """Whether a state-changing request comes from one of our own pages. A browser
        sends Origin with every POST; Referer is the fallback for those that do not."""
        ours = self.origin(request)
        origin = request.headers.get("Origin")
        if origin is not None:
            return origin == ours
        referer = request.headers.get("Referer")
        return referer is not None and (referer == ours or referer.startswith(ours + "/"))

    @staticmethod
    async def _csrf_ok(request: web.Request, session: Session) -> bool:
        token = request.headers.get("X-CSRF-Token")
        if token is None and request.content_type in ("application/x-www-form-urlencoded",
                                                      "multipart/form-data"):
            value = (await request.post()).get("csrf")
            token = value if isinstance(value, str) else None
        return token is not None and hmac.compare_digest(token.encode(),
                                                         session.csrf.encode())


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _hostname(host: str) -> str:
    """The name in a Host header, without its port or an IPv6 address's brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def session_of(request: web.Request) -> Session:
    return request[SESSION]  # only routes behind Access reach here, with a session
