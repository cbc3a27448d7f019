"""/metrics, /healthz and /readyz on the relay's HTTP server (the counters: relay.metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from relay.metrics import CachedCheck, Check, exposition
from relay.web.server import WebServer


class MetricsRoutes:
    """/metrics, /healthz (the process answers) and /readyz (checks, cached: give a
    CachedCheck to share its cache, any other check is wrapped in one)."""

    def __init__(self, readiness: Check, refresh: Callable[[], None],
                 cache_seconds: float = 15.0, check_timeout: float = 5.0) -> None:
        self._ready = (readiness if isinstance(readiness, CachedCheck)
                       else CachedCheck(readiness, cache_seconds, check_timeout))
        self._refresh = refresh

    def add_to(self, server: WebServer) -> None:
        server.add_route("GET", "/metrics", self._metrics)
        server.add_route("GET", "/healthz", self._healthz)
        server.add_route("GET", "/readyz", self._readyz)

    async def _metrics(self, _request: web.Request) -> web.Response:
        self._refresh()
        # With workers, reading every worker's files is I/O: off the loop.
        body = await asyncio.to_thread(exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        ok, detail = await self._ready()
        return web.Response(status=200 if ok else 503, text=detail + "\n")
