"""The relay's HTTP listeners as a list the composition root rebuilds on SIGHUP.

Each Site is one listener as configured (metrics, the feedback webhook, the console...):
where it listens, its TLS files, the web limits, and how its routes are added. A reload
builds the new list; every site whose configuration changed (or whose TLS files may have
been renewed) is started anew BEFORE the old one is closed, so the port never stops
answering, and if any new one cannot listen none of them replaces anything: the reload
is refused and the running listeners stay (``prepare`` then ``commit``).

A site that keeps its address and port keeps its listening socket: at ``commit`` new
connections go to the new server at once, with no accept lost and no bind that would fail
on a port in use; the old server answers the requests it has (one per connection, within
the deadline), then stops, in the background.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp.typedefs import Middleware

from relay.config import WebConfig
from relay.errors import ConfigError
from relay.smtp import tlscontext
from relay.web.gate import GRACE
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


class _Socket:
    """One listening socket; which server its new connections go to can change."""

    def __init__(self, target: Callable[[], asyncio.Protocol]) -> None:
        self.target = target
        self._server: asyncio.Server | None = None

    async def listen(self, address: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: self.target(), address, port,
                                                reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class _Running:
    site: Site
    server: WebServer
    socket: _Socket
    port: int
    target: Callable[[], asyncio.Protocol]  # the server's protocol factory


class SiteError(Exception):
    """A site that cannot listen (its port taken, its certificate unreadable)."""


@dataclass
class Swap:
    """New servers set up (and bound, on a new address), old ones still serving: ``commit``
    or ``abort``."""

    sites: Sites
    new: dict[str, _Running]
    started: list[_Running]

    async def commit(self) -> list[str]:
        """Send new connections to the new servers; retire what they replace or the new
        list leaves out. Return the names restarted."""
        old, self.sites._running = self.sites._running, self.new
        for running in self.started:
            running.socket.target = running.target  # a kept socket: from now on
        retired = []
        for name, running in old.items():
            new = self.new.get(name)
            if new is running:
                continue
            if new is None or new.socket is not running.socket:
                running.socket.close()
            retired.append(running)
        self.sites._retire(retired)
        return [name for name, running in self.new.items() if old.get(name) is not running]

    async def abort(self) -> None:
        kept = {r.socket for r in self.sites._running.values()}
        for running in self.started:
            if running.socket not in kept:
                running.socket.close()
            await running.server.stop()


class Sites:
    def __init__(self) -> None:
        self._running: dict[str, _Running] = {}
        self._retiring: set[asyncio.Task[None]] = set()

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
        """Set up the sites that changed; raise SiteError (nothing changed) if one fails.

        With *rebuild_tls*, a site with TLS files restarts even when unchanged, so that a
        renewed certificate is served after the reload (as the SMTP listeners' is)."""
        new: dict[str, _Running] = {}
        started: list[_Running] = []
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
            started.append(new[site.name])
        return swap

    async def _start(self, site: Site, old: _Running | None) -> _Running:
        tls = tlscontext.build(*site.tls) if site.tls else site.context
        server = WebServer(site.name, site.web, max_body=site.max_body,
                           middlewares=site.middlewares)
        site.routes(server)
        target = await server.prepare(tls)
        if old is not None and (old.site.address, old.site.port) == (site.address, site.port):
            return _Running(site, server, old.socket, old.port, target)
        sock = _Socket(target)
        try:
            port = await sock.listen(site.address, site.port)
        except BaseException:
            await server.stop()
            raise
        return _Running(site, server, sock, port, target)

    def _retire(self, retired: list[_Running]) -> None:
        for running in retired:
            task = asyncio.create_task(self._stop_when_drained(running),
                                       name=f"retire-{running.site.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _stop_when_drained(running: _Running) -> None:
        await running.server.drain(running.site.web.request_timeout + GRACE)
        await running.server.stop()

    async def stop(self) -> None:
        running, self._running = self._running, {}
        for r in running.values():
            r.socket.close()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for r in running.values():
            await r.server.stop()
