"""The relay's HTTP server: aiohttp.web, to which modules add their routes.

relay.metrics adds /metrics, /healthz and /readyz, relay.feedback the SNS webhook; each
listener (``metrics``, ``feedback.http``) is one WebServer with its own counts. aiohttp
reads every request within limits (a request or header line, the number of headers: 400
past them; the body: 413 past ``max_body``); relay.web.gate adds what aiohttp lacks, the
connection caps and one deadline per connection, and a middleware bounds the handler by
that same deadline.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from relay import log
from relay.config import WebConfig
from relay.limits import Connections
from relay.web.gate import GRACE, Admission, Gate

_log = log.get("web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp logs every malformed request from the internet with a traceback through the
# standard library; those are the client's trouble, answered 400 and counted by nobody.
# Our handlers' own failures are logged by the middleware below.
_AIOHTTP_LOG = logging.getLogger("relay.web.aiohttp")
_AIOHTTP_LOG.setLevel(logging.CRITICAL)
_AIOHTTP_LOG.propagate = False


class WebServer:
    """One HTTP server. Add routes, then ``prepare`` (relay.web.sites listens for it);
    ``stop`` lets answers under way finish (they are bounded by the deadline) and drops
    the rest."""

    def __init__(self, name: str, config: WebConfig, *, max_body: int = 64 * 1024,
                 middlewares: Iterable[Middleware] = ()) -> None:
        """*middlewares*: a module's own (the console's access rules), run inside the
        deadline for every request, routed or not."""
        self.name = name
        self._config = config
        self.app = web.Application(client_max_size=max_body,
                                   middlewares=[_deadline, *middlewares])
        self._runner: web.AppRunner | None = None
        self._admission: Admission | None = None

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.app.router.add_route(method, path, handler)

    @property
    def connections(self) -> int:
        """Connections held now (counted from accept, TLS handshakes included)."""
        return self._admission.connections.count if self._admission is not None else 0

    async def prepare(self, tls: ssl.SSLContext | None = None
                      ) -> Callable[[], asyncio.Protocol]:
        """Set up; return the protocol factory for a listening socket, which
        relay.web.sites owns (and keeps across servers that replace each other)."""
        c = self._config
        self._runner = runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, logger=_AIOHTTP_LOG,
            max_line_size=c.max_header_size, max_field_size=c.max_header_size,
            max_headers=c.max_headers, shutdown_timeout=c.request_timeout + GRACE,
            # After an answer given before the whole body came (413), read on this long
            # so the client sees the answer rather than a reset.
            lingering_time=1.0)
        await runner.setup()
        server = runner.server
        assert server is not None  # set by setup()
        admission = self._admission = Admission(
            self.name, Connections(c.max_connections, c.max_connections_per_ip),
            c.request_timeout, tls)
        return lambda: Gate(server, admission)

    async def drain(self, grace: float) -> bool:
        """Wait (up to *grace* seconds) for the connections it holds to end: one request each,
        answered within the deadline. False if some are still open."""
        if self._admission is None:
            return True
        return await self._admission.connections.wait_idle(grace)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._admission is not None:
            self._admission.close_all()  # handshakes aiohttp never saw


@web.middleware
async def _deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run *handler* within the connection's deadline; answer once, then close."""
    gate = _gate(request)
    if gate is None:  # the connection is already gone
        raise web.HTTPServiceUnavailable
    gate.handling = True
    size, limit = request.content_length, request.client_max_size
    try:
        if size is not None and size > limit:  # said up front: no need to wait for it
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        async with asyncio.timeout_at(gate.deadline):
            response = await handler(request)
    except TimeoutError:
        # A body still arriving is the client's slowness; anything else is ours.
        response = (web.Response(status=503, text="timed out\n")
                    if request.content.is_eof() else
                    web.Response(status=408, text="request not received in time\n"))
    except web.HTTPException as e:  # aiohttp's own answers: 404, 405, 413
        e.force_close()
        raise
    except Exception as e:  # a route's bug: a 500 and a log line, never a traceback out
        _log.error("http_handler_failed", path=request.path,
                   error=f"{type(e).__name__}: {e}")
        response = web.Response(status=500, text="internal error\n")
    if response.status in (408, 500, 503) and "Cache-Control" not in response.headers:
        # Answered here, outside a module's own middleware (the console's headers).
        response.headers["Cache-Control"] = "no-store"
    response.force_close()
    return response


def _gate(request: web.Request) -> Gate | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, Gate) else None
