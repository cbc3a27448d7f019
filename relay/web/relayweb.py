"""What the relay's first process serves over HTTP (metrics, the feedback webhook, the
console), built from a configuration: at start, and again by reload.

Only the first process imports this (relay.queueshare.Share.first), so the others load
neither aiohttp nor Jinja2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay import log
from relay.config import Config, ConsoleConfig
from relay.feedback import sns
from relay.web.metricsroutes import MetricsRoutes
from relay.web.sites import Site

if TYPE_CHECKING:
    from relay.app import Relay
    from relay.web.console import Console

_log = log.get("app")


class RelayWeb:
    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._console: tuple[ConsoleConfig, Console] | None = None  # its app, kept

    def sites(self, cfg: Config) -> list[Site]:
        """The HTTP listeners *cfg* asks for. (A new one, such as the console, is one more
        Site here: reload rebuilds it like the others.)"""
        relay = self._relay
        sites = []
        if cfg.metrics is not None:
            routes = MetricsRoutes(relay.ready, relay.refresh_gauges)
            sites.append(Site("metrics", cfg.metrics.address, cfg.metrics.port, cfg.web,
                              routes=routes.add_to))
        http, feedback = cfg.feedback.http, relay.feedback
        if http is not None and feedback is not None:
            sites.append(Site("feedback", http.address, http.port, cfg.web,
                              tls=(http.cert, http.key) if http.cert and http.key else None,
                              max_body=sns.MAX_POST_BYTES, extra=(http.path,),
                              routes=lambda server: feedback.add_routes(server, http.path)))
        if cfg.console is not None:
            app = self._console_app(cfg, cfg.console)
            tls = relay.tls.context if cfg.console.tls and relay.tls is not None else None
            # extra: the app holds its section (session_timeout...): a new one, a new server.
            sites.append(Site("console", cfg.console.address, cfg.console.port, cfg.web,
                              context=tls, extra=(cfg.console,),
                              middlewares=(app.access.middleware,), routes=app.add_to))
        return sites

    def log_console(self) -> None:
        console, port = self._relay.config.console, self._relay.console_port
        if console is not None and port is not None:
            host = f"[{console.address}]" if ":" in console.address else console.address
            _log.info("console", url=f"{'https' if console.tls else 'http'}://{host}:{port}/")

    def _console_app(self, cfg: Config, console: ConsoleConfig) -> Console:
        """The console's application, kept (with its logins) while its section stays."""
        if self._console is None or self._console[0] != console:
            self._console = (console, self._build_console(cfg, console))
        return self._console[1]

    def _build_console(self, cfg: Config, console: ConsoleConfig) -> Console:
        # Imported here: Jinja2 and the templates are loaded only by a relay that serves it.
        from relay import queueadmin
        from relay.smtp.auth import Authenticator
        from relay.web.console import Console
        from relay.web.console.data import Sources

        relay = self._relay
        assert relay.scheduler is not None and relay.events is not None
        assert relay.suppression is not None
        src = Sources(config=lambda: relay.config, users=relay.current_users,
                      spool=queueadmin.open_spool(cfg.queue.directory, cfg.deliverers),
                      scheduler=relay.scheduler, events=relay.events,
                      suppression=relay.suppression, readiness=relay.ready)
        # The same guard and cache as SMTP AUTH: failures here count towards the lockout
        # there, and the other way round.
        return Console(console, src, Authenticator(relay.current_users, relay.auth_guard,
                                                   relay.auth_cache), relay.auth_guard)
