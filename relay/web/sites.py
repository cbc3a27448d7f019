"""The relay's HTTP listeners as a list the composition root rebuilds on SIGHUP.

Each Site is one listener as configured (metrics, the feedback webhook, the console...):
where it listens, its TLS files, the web limits, and how its routes are added. A reload
builds the new list; every site whose configuration changed (or whose TLS files may have
been renewed) is started anew BEFORE the old one is closed, so the port never stops
answering, and if any new one cannot listen none of them replaces anything: the reload
is refused and the running listeners stay (``prepare`` then ``commit``).

A site that keeps its address and port takes over the old one's listening socket (a
second descriptor of it) instead of binding again: binding a port that is listening
would fail, and the socket never closes in between.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp.typedefs import Middleware

from relay.config import WebConfig
from relay.errors import ConfigError
from relay.smtp import tlscontext
from relay.web.server import WebServer


@dataclass(frozen=True)
class Site:
    name: str
    address: str
    port: int
    web: WebConfig
    tls: tuple[Path, Path] | None = None  # certificate and key files
    # Or a context kept up to date elsewhere (the relay's own, renewed by reload).
    context: ssl.SSLContext | None = None
    max_body: int = 64 * 1024
    extra: tuple[object, ...] = ()  # whatever else of its section its routes depend on
    # Not part of what is compared: the same routes, whatever the configuration says.
    routes: Callable[[WebServer], None] = field(default=lambda _s: None, compare=False)
    middlewares: tuple[Middleware, ...] = field(default=(), compare=False)


@dataclass
class _Running:
    site: Site
    server: WebServer
    port: int


class SiteError(Exception):
    """A site that cannot listen (its port taken, its certificate unreadable)."""


@dataclass
class Swap:
    """New servers started, old ones still running: ``commit`` or ``abort``."""

    sites: Sites
    new: dict[str, _Running]
    started: list[WebServer]

    async def commit(self) -> list[str]:
        """Close what the new list replaced or left out; return the names restarted."""
        old, self.sites._running = self.sites._running, self.new
        for name, running in old.items():
            if self.new.get(name) is not running:
                await running.server.stop()
        return [name for name, running in self.new.items()
                if old.get(name) is not running]

    async def abort(self) -> None:
        for server in self.started:
            await server.stop()


class Sites:
    def __init__(self) -> None:
        self._running: dict[str, _Running] = {}

    def server(self, name: str) -> WebServer | None:
        running = self._running.get(name)
        return running.server if running is not None else None

    def port(self, name: str) -> int | None:
        running = self._running.get(name)
        return running.port if running is not None else None

    def ports(self) -> dict[str, int]:
        return {name: running.port for name, running in self._running.items()}

    async def start(self, sites: list[Site]) -> None:
        """At start-up: a site that cannot listen is an OSError, as an SMTP listener's is."""
        swap = await self.prepare(sites, rebuild_tls=False, wrap=False)
        await swap.commit()

    async def prepare(self, sites: list[Site], *, rebuild_tls: bool = True,
                      wrap: bool = True) -> Swap:
        """Start the sites that changed; raise SiteError (nothing changed) if one fails.

        With *rebuild_tls*, a site with TLS files restarts even when unchanged, so that a
        renewed certificate is served after the reload (as the SMTP listeners' is)."""
        new: dict[str, _Running] = {}
        started: list[WebServer] = []
        swap = Swap(self, new, started)
        for site in sites:
            old = self._running.get(site.name)
            if old is not None and old.site == site and not (rebuild_tls and site.tls):
                new[site.name] = old
                continue
            try:
                new[site.name] = await self._start(site, old)
            except (OSError, ConfigError) as e:
                await swap.abort()
                if not wrap:
                    raise
                why = "; ".join(e.problems) if isinstance(e, ConfigError) else (
                    f"cannot listen on {site.address}:{site.port}: {e.strerror or e}")
                raise SiteError(f"{site.name}: {why}") from e
            started.append(new[site.name].server)
        return swap

    async def _start(self, site: Site, old: _Running | None) -> _Running:
        tls = tlscontext.build(*site.tls) if site.tls else site.context
        server = WebServer(site.name, site.web, max_body=site.max_body,
                           middlewares=site.middlewares)
        site.routes(server)
        sock = None
        if old is not None and (old.site.address, old.site.port) == (site.address, site.port):
            sock = old.server.dup_socket()
        try:
            port = await server.start(site.address, site.port, tls, sock=sock)
        except BaseException:
            if sock is not None:
                sock.close()
            await server.stop()
            raise
        return _Running(site, server, port)

    async def stop(self) -> None:
        running, self._running = self._running, {}
        for r in running.values():
            await r.server.stop()
