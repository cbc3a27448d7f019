"""The composition root: the only module that knows every part and wires them together.

It owns start-up order (queue before listeners, so nothing is accepted that cannot be
stored), signals, and shutdown order (listeners first, then delivery, then the transport).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay import config as config_mod
from relay import (
    dsn,
    log,
    maillog,
    metrics,
    queued,
    running,
    sessuppression,
    users,
)
from relay.authcache import SuccessCache
from relay.config import Config
from relay.delivery import Scheduler
from relay.errors import ConfigError, DeliveryError, SpoolError, UsersFileError
from relay.events import EventStore
from relay.feedback import sns
from relay.feedback.service import FeedbackService
from relay.limits import AuthGuard, Connections
from relay.metrics import CachedCheck, MetricsRoutes
from relay.policy import Policy
from relay.queuespace import QueueSpace
from relay.reputation import ReputationGuard
from relay.smtp import listeners, tlscontext
from relay.smtp.handler import Handler
from relay.smtp.tlscontext import ServerTLS
from relay.spool import ALONE, Envelope, Share, Spool
from relay.suppression import SuppressionList
from relay.transports import Transport, build, probe
from relay.transports.base import MAX_MESSAGE_SIZE
from relay.userlimits import DB_NAME as USER_LIMITS_DB
from relay.userlimits import Ledger, UserLimits
from relay.web.server import WebServer
from relay.web.sites import Site, SiteError, Sites

if TYPE_CHECKING:
    from relay.ratelimit_redis import SharedBucket
    from relay.web.console import Console

_log = log.get("app")
# The quota call may be refused while sending works (no ses:GetAccount permission, or an
# emulator without GetAccount): the endpoint answered with our credentials, so we are ready.
_READY_ANYWAY = frozenset({"AccessDenied", "AccessDeniedException", "NotFound", "404"})
_GAUGES_EVERY = 5.0


@dataclass
class Relay:
    config: Config
    # This process's part when several share the ports and the queue (relay.supervisor):
    # the first one also runs what must run once (metrics and feedback listeners, syncs).
    share: Share = ALONE
    transport: Transport | None = None
    spool: Spool | None = None
    scheduler: Scheduler | None = None
    limiter: SharedBucket | None = None  # delivery.rate_limiter's
    servers: list[asyncio.Server] = field(default_factory=list)
    sessions: list[listeners.Sessions] = field(default_factory=list)  # one per listener
    suppression: SuppressionList | None = None
    _users: users.UserDB | None = None
    connections: Connections = field(init=False)
    auth_guard: AuthGuard = field(init=False)
    auth_cache: SuccessCache = field(default_factory=SuccessCache)  # one for every listener
    policy: Policy | None = None
    user_limits: UserLimits | None = None  # max_rate, max_per_day: shared counts
    queue_space: QueueSpace | None = None  # queue.min_free, checked at MAIL
    handlers: list[Handler] = field(default_factory=list)
    tls: ServerTLS | None = None
    # The HTTP listeners (metrics, the feedback webhook...), rebuilt by reload: _sites.
    sites: Sites = field(default_factory=Sites)
    events: EventStore | None = None
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    feedback: FeedbackService | None = None
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    _console: tuple[config_mod.ConsoleConfig, Console] | None = None  # its app, kept
    # The readiness check, cached: /readyz and the console's overview share one, so the
    # upstream is asked once per period, and a reload does not empty it.
    ready: CachedCheck = field(init=False)
    _queued: queued.Receiver | None = None  # word of new mail from the SMTP processes

    def __post_init__(self) -> None:
        self.ready = CachedCheck(self._readiness)
        limits = self.config.limits
        self.connections = Connections(limits.max_connections, limits.max_connections_per_ip)
        self.auth_guard = AuthGuard(limits.max_auth_failures, limits.auth_lockout)

    @property
    def message_size_limit(self) -> int:
        """The limit advertised in EHLO SIZE: ours, capped by what the transport accepts."""
        cfg = self.config
        most = (self.transport.max_message_size if self.transport is not None
                else MAX_MESSAGE_SIZE[cfg.delivery.transport])
        return min(cfg.limits.max_message_size, most)

    def _min_free(self) -> int:
        """queue.min_free, or two maximal messages (relay.queuespace says why)."""
        return self.config.queue.min_free or 2 * self.message_size_limit

    def bound_ports(self) -> dict[str, int]:
        """The port each SMTP listener got, by listener name: with port 0 configured the
        kernel picks one, and this (and the ``started`` log line) says which."""
        ports: dict[str, int] = {}
        if not self.servers:  # the delivery process: the SMTP processes listen
            return ports
        for listener, server in zip(self.config.listeners, self.servers, strict=True):
            ports[listener.name] = server.sockets[0].getsockname()[1]
        return ports

    def http_ports(self) -> dict[str, int]:
        """The ports the HTTP listeners got (``metrics``, ``feedback``, ``console``), those
        running."""
        return self.sites.ports()

    @property
    def console_server(self) -> WebServer | None:
        return self.sites.server("console")

    @property
    def console_port(self) -> int | None:
        return self.sites.port("console")

    async def start(self) -> None:
        """Start what this process's role asks (relay.queueshare.Share): taking mail,
        delivering it, or both."""
        cfg = self.config
        self._users = users.load(cfg.users_file, must_exist=users.required_by(cfg.listeners))
        # Before anything starts: a certificate that cannot be loaded is a ConfigError.
        self.tls = (ServerTLS(cfg.tls.cert, cfg.tls.key)
                    if cfg.tls.cert and cfg.tls.key else None)
        self.suppression = await asyncio.to_thread(SuppressionList, cfg.suppression.database)
        self.policy = Policy(cfg, self.suppression)
        self.spool = Spool(cfg.queue.directory, self.share)
        backlog = await asyncio.to_thread(self.spool.open)
        if self.share.role != "smtp":
            await self._start_transport(backlog)
        # Opening may wait on the schema lock while other workers start: not on the loop.
        self.events = await asyncio.to_thread(EventStore, cfg.feedback.database)
        self.events.start()
        maillog.attach(self.events)
        if self.share.first:
            await self._start_feedback()
        if self.scheduler is not None:
            await self.scheduler.start()
            if (sock := queued.inherited()) is not None:  # the SMTP processes' word
                self._queued = queued.Receiver(sock, self.scheduler.enqueue)
                self._queued.start()
        if self.share.role != "delivery":
            await self._start_listeners()
        # Each process that delivers publishes its gauges for the first one to serve.
        if self.share.several and self.scheduler is not None:
            self._background.append(asyncio.create_task(self._publish_gauges(),
                                                        name="gauges"))
        await self.sites.start(self._sites(cfg))
        await self._record_running()
        self._log_console()
        _log.info("started", listeners=self.bound_ports(), http=self.http_ports(),
                  transport=cfg.delivery.transport,
                  queued=len(backlog), users=len(list(self._users)),
                  max_message_size=self.message_size_limit)

    async def _start_transport(self, backlog: list[str]) -> None:
        cfg, deliverers = self.config, self.share.deliverers
        self.transport = build(cfg.delivery)
        await self.transport.start()
        assert self.spool is not None
        if cfg.delivery.rate_limiter:
            # Imported here: the Redis client is loaded only by a relay that uses it.
            from relay.ratelimit_redis import fleet_limiter
            self.limiter = fleet_limiter(
                cfg.delivery.rate_limiter, region=cfg.delivery.region,
                max_send_rate=cfg.delivery.max_send_rate, share=1 / deliverers)
        self.scheduler = Scheduler(self.spool, self.transport, cfg.queue,
                                   concurrency=cfg.delivery.concurrency,
                                   max_inflight_bytes=64 * 2**20 // deliverers,
                                   max_send_rate=cfg.delivery.max_send_rate,
                                   rate_share=1 / deliverers,
                                   on_failed=self._notify_sender, limiter=self.limiter,
                                   suppression=self.suppression)
        self.scheduler.load_backlog(backlog)

    async def _start_feedback(self) -> None:
        cfg = self.config
        loop, scheduler = asyncio.get_running_loop(), self.scheduler
        assert self.events is not None and self.suppression is not None
        assert scheduler is not None, "the first process delivers"

        def pause(reason: str) -> None:
            # The reputation guard decides in a worker thread; the scheduler lives on
            # the loop.
            loop.call_soon_threadsafe(scheduler.pause, reason)

        self.feedback = FeedbackService(
            cfg.feedback, self.events, self.suppression,
            ReputationGuard(self.events, cfg.feedback, pause),
            region=cfg.delivery.region, identity=cfg.delivery,
            share=self._share_suppression if cfg.suppression.backend == "ses" else None)
        await self.feedback.start()
        if cfg.suppression.backend == "ses":
            self._background.append(asyncio.create_task(sessuppression.keep_in_step(
                cfg.delivery, self.suppression, cfg.suppression.sync_interval),
                name="suppression-sync"))

    async def _start_listeners(self) -> None:
        cfg, tls = self.config, self.tls
        assert self.spool is not None and self.policy is not None
        if self.scheduler is not None:
            on_queued: Callable[[str], None] = self.scheduler.enqueue
        else:  # delivery is another process's
            sock = queued.inherited()
            on_queued = queued.Sender(sock) if sock is not None else _nobody
        self.user_limits = await asyncio.to_thread(  # may wait on the schema lock
            UserLimits, cfg.queue.directory / USER_LIMITS_DB)
        ledger = Ledger(self.user_limits)
        self.queue_space = QueueSpace(cfg.queue.directory, self._min_free())
        for listener in cfg.listeners:
            handler = Handler(listener=listener, users=self._current_users, spool=self.spool,
                              policy=self.policy, limits=cfg.limits, hostname=cfg.hostname,
                              on_queued=on_queued,
                              connections=self.connections, auth_guard=self.auth_guard,
                              auth_cache=self.auth_cache, ledger=ledger,
                              space=self.queue_space)
            self.handlers.append(handler)
            server, sessions = await listeners.start(
                listener, handler, hostname=cfg.hostname,
                tls=tls.context if tls is not None else None,
                data_size_limit=self.message_size_limit, limits=cfg.limits,
                reuse_port=self.share.count > 1)
            self.servers.append(server)
            self.sessions.append(sessions)

    def _sites(self, cfg: Config) -> list[Site]:
        """The HTTP listeners *cfg* asks for, run by the first process only. (A new one,
        such as the console, is one more Site here: reload rebuilds it like the others.)"""
        if not self.share.first:
            return []
        sites = []
        if cfg.metrics is not None:
            routes = MetricsRoutes(self.ready, self._refresh_gauges)
            sites.append(Site("metrics", cfg.metrics.address, cfg.metrics.port, cfg.web,
                              routes=routes.add_to))
        http, feedback = cfg.feedback.http, self.feedback
        if http is not None and feedback is not None:
            sites.append(Site("feedback", http.address, http.port, cfg.web,
                              tls=(http.cert, http.key) if http.cert and http.key else None,
                              max_body=sns.MAX_POST_BYTES, extra=(http.path,),
                              routes=lambda server: feedback.add_routes(server, http.path)))
        if cfg.console is not None:
            app = self._console_app(cfg)
            tls = self.tls.context if cfg.console.tls and self.tls is not None else None
            # extra: the app holds its section (session_timeout...): a new one, a new server.
            sites.append(Site("console", cfg.console.address, cfg.console.port, cfg.web,
                              context=tls, extra=(cfg.console,),
                              middlewares=(app.access.middleware,), routes=app.add_to))
        return sites

    def _console_app(self, cfg: Config) -> Console:
        """The console's application, kept (with its logins) while its section stays."""
        assert cfg.console is not None
        if self._console is None or self._console[0] != cfg.console:
            self._console = (cfg.console, self._build_console(cfg, cfg.console))
        return self._console[1]

    def _log_console(self) -> None:
        console, port = self.config.console, self.sites.port("console")
        if console is not None and port is not None:
            host = f"[{console.address}]" if ":" in console.address else console.address
            _log.info("console", url=f"{'https' if console.tls else 'http'}://{host}:{port}/")

    async def _record_running(self) -> None:
        """The running configuration, for `ses-relay check-config --running`."""
        if not self.share.first:
            return
        try:
            bound = running.bound_keys(self.bound_ports(), self.http_ports())
            await asyncio.to_thread(running.write, self.config, os.getpid(), bound)
        except OSError as e:
            _log.warning("running_config_not_recorded", error=str(e),
                         hint="`check-config --running` cannot compare with this relay")

    def _build_console(self, cfg: Config, console: config_mod.ConsoleConfig) -> Console:
        # Imported here: Jinja2 and the templates are loaded only by a relay that serves it.
        from relay import queueadmin
        from relay.smtp.auth import Authenticator
        from relay.web.console import Console
        from relay.web.console.data import Sources

        assert self.scheduler is not None and self.events is not None
        assert self.suppression is not None
        src = Sources(config=lambda: self.config, users=self._current_users,
                      spool=queueadmin.open_spool(cfg.queue.directory, cfg.deliverers),
                      scheduler=self.scheduler, events=self.events,
                      suppression=self.suppression, readiness=self.ready)
        # The same guard and cache as SMTP AUTH: failures here count towards the lockout
        # there, and the other way round.
        return Console(console, src, Authenticator(self._current_users, self.auth_guard,
                                                   self.auth_cache), self.auth_guard)

    async def _notify_sender(self, queue_id: str, envelope: Envelope,
                             record: dict[str, Any]) -> None:
        """Queue an RFC 3464 notice to the sender of a message that failed after its 250."""
        assert self.spool is not None and self.scheduler is not None
        notice_id = await dsn.queue_notice(self.spool, self.config.delivery,
                                           self.config.hostname, queue_id, envelope, record)
        if notice_id is not None:
            self.scheduler.enqueue(notice_id)

    async def _share_suppression(self, entries: list[tuple[str, str]]) -> None:
        """backend: ses. What feedback suppressed here goes to SES's list at once."""
        try:
            async with sessuppression.SESSuppression(self.config.delivery) as ses:
                await ses.push(entries)
        except DeliveryError as e:
            _log.warning("suppression_push_failed", code=e.code, hint=e.hint,
                         addresses=len(entries))

    def _refresh_gauges(self) -> None:
        if self.scheduler is not None:
            metrics.QUEUE_DEPTH.set(self.scheduler.pending)
            metrics.QUEUE_OLDEST.set(self.scheduler.oldest_age())
            metrics.SEND_RATE_LIMIT.set(self.scheduler.rate or 0)

    async def _publish_gauges(self) -> None:
        while True:
            self._refresh_gauges()
            await asyncio.sleep(_GAUGES_EVERY)

    async def _readiness(self) -> tuple[bool, str]:
        """Ready: the queue takes writes and the upstream answers with our credentials."""
        assert self.spool is not None and self.transport is not None
        try:
            await asyncio.to_thread(self.spool.probe)
        except OSError as e:
            return False, f"queue not writable: {e.strerror}"
        try:
            await probe(self.transport)  # its own probe (smtp, outbox), or its quota call
        except DeliveryError as e:
            if e.code not in _READY_ANYWAY:
                return False, f"upstream: {e.code}: {e.hint}"
        return True, "ready"

    def _current_users(self) -> users.UserDB:
        assert self._users is not None
        return self._users

    async def reload(self) -> bool:
        """SIGHUP: apply every setting that can be applied live (users, TLS certificates,
        policy, hostname, log, limits, the HTTP listeners) without dropping a session. An
        invalid new configuration, or an HTTP listener that cannot listen, is refused and
        the running configuration stays whole.

        SMTP listeners, the queue, the transport, the suppression database, feedback (but
        its listener) and workers are bound at start: those keys are logged as needing a
        restart (relay.running.LIVE says which are live), and keep their running values.
        """
        async with self._reloading:  # one SIGHUP after the other
            return await self._reload()

    async def _reload(self) -> bool:
        old = self.config
        try:
            assert old.source is not None
            new = await asyncio.to_thread(config_mod.load, old.source)
            new_users = await asyncio.to_thread(users.load, new.users_file,
                                                must_exist=users.required_by(new.listeners))
            new_tls: ssl.SSLContext | None = None
            if self.tls is not None and new.tls.cert and new.tls.key:
                # Built aside, never loaded into the live context: a bad key would leave
                # it without a usable certificate (see relay.smtp.tlscontext).
                new_tls = await asyncio.to_thread(tlscontext.build, new.tls.cert, new.tls.key)
            applied = running.applicable(old, new, tls_on=self.tls is not None)
            swap = await self.sites.prepare(self._sites(applied))
        except (ConfigError, UsersFileError, OSError, SiteError, SpoolError) as e:
            # SpoolError: a console turned on opens its view of the queue (queueadmin).
            problems = e.problems if isinstance(e, ConfigError) else [str(e)]
            _log.error("reload_refused", problems=problems,
                       hint="the running configuration stays; fix the file and reload again")
            return False
        # Whatever still differs from the file is what only a restart applies.
        restart = running.differences(running.flatten(applied), running.flatten(new))
        self.config = applied
        self._users = new_users
        if self.tls is not None and new_tls is not None:
            # New handshakes get the new certificate; sessions already up are untouched.
            self.tls.replace(new_tls)
        self._apply_limits()
        assert self.policy is not None
        self.policy.reconfigure(self.config)
        log.configure(new.log.format, new.log.level)
        restarted = await swap.commit()
        await self._record_running()
        if "console" in restarted:
            self._log_console()
        _log.info("reloaded", users=len(list(new_users)), http=self.http_ports(),
                  **({"web_restarted": restarted} if restarted else {}),
                  **({"restart_needed_for": restart} if restart else {}))
        return True

    def _apply_limits(self) -> None:
        """limits.* (and the send rate) from now on; counts so far are kept."""
        cfg = self.config
        limits = cfg.limits
        self.connections.total_limit = limits.max_connections
        self.connections.per_ip_limit = limits.max_connections_per_ip
        self.auth_guard.max_failures = limits.max_auth_failures
        self.auth_guard.window = limits.auth_lockout
        for handler in self.handlers:
            handler.reconfigure(limits, cfg.hostname)
        if self.scheduler is not None:
            self.scheduler.set_max_send_rate(cfg.delivery.max_send_rate)
        if self.queue_space is not None:  # the default follows limits.max_message_size
            self.queue_space.min_free = self._min_free()
        tls = self.tls.context if self.tls is not None else None
        for sessions in self.sessions:
            sessions.rebuild(hostname=cfg.hostname, tls=tls,
                             data_size_limit=self.message_size_limit, limits=limits)

    async def stop(self) -> None:
        """Stop accepting, let sessions finish (up to limits.shutdown_grace), then stop
        delivery cleanly. Whatever is cut short got no 250 and stays the client's."""
        for server in self.servers:
            server.close()
        grace = self.config.limits.shutdown_grace
        if not await self.connections.wait_idle(grace):
            _log.warning("shutdown_grace_over", sessions=self.connections.count)
            for handler in self.handlers:
                for session in list(handler.live):
                    session.close()  # no 250 was given: the client keeps its message
            await self.connections.wait_idle(5)
        await self.sites.stop()
        for task in self._background:
            task.cancel()
        if self._queued is not None:
            self._queued.stop()
        if self.feedback is not None:
            await self.feedback.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.transport is not None:
            await self.transport.aclose()
        if self.suppression is not None:
            self.suppression.close()
        if self.user_limits is not None:  # after the sessions: their refunds first
            await asyncio.to_thread(self.user_limits.close)
        if self.spool is not None:
            await asyncio.to_thread(self.spool.close)
        if self.events is not None:
            maillog.attach(None)
            await asyncio.to_thread(self.events.close)
        if self.share.first:  # no record of a relay that is gone
            await asyncio.to_thread(running.forget, self.config.queue.directory, os.getpid())
        _log.info("stopped")


def _nobody(queue_id: str) -> None:
    """A process that only takes mail, started without the channel (by hand): the
    delivery process's queue scan finds the message."""
