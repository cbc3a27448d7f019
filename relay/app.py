"""The composition root: the only module that knows every part and wires them together.

It owns start-up order (queue before listeners, so nothing is accepted that cannot be
stored), signals, and shutdown order (listeners first, then delivery, then the transport).
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from dataclasses import dataclass, field, replace
from typing import Any

from relay import config as config_mod
from relay import dsn, log, maillog, memory, metrics, sessuppression, systemd, users
from relay.authcache import SuccessCache
from relay.config import Config
from relay.delivery import Scheduler
from relay.errors import ConfigError, DeliveryError, SpoolError, UsersFileError
from relay.events import EventStore
from relay.feedback import sns
from relay.feedback.service import FeedbackService
from relay.limits import AuthGuard, Connections
from relay.metrics import MetricsRoutes
from relay.policy import Policy
from relay.reputation import ReputationGuard
from relay.smtp import listeners, tlscontext
from relay.smtp.handler import Handler
from relay.smtp.tlscontext import ServerTLS
from relay.spool import ALONE, Envelope, Share, Spool
from relay.suppression import SuppressionList
from relay.transports import Transport, build
from relay.web.server import WebServer

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
    servers: list[asyncio.Server] = field(default_factory=list)
    suppression: SuppressionList | None = None
    _users: users.UserDB | None = None
    connections: Connections = field(init=False)
    auth_guard: AuthGuard = field(init=False)
    auth_cache: SuccessCache = field(default_factory=SuccessCache)  # one for every listener
    policy: Policy | None = None
    handlers: list[Handler] = field(default_factory=list)
    tls: ServerTLS | None = None
    metrics_server: WebServer | None = None
    feedback_server: WebServer | None = None
    console_server: WebServer | None = None
    console_port: int | None = None
    events: EventStore | None = None
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    feedback: FeedbackService | None = None
    metrics_port: int | None = None
    feedback_port: int | None = None
    _console_ready: tuple[float, bool, str] | None = None

    def __post_init__(self) -> None:
        limits = self.config.limits
        self.connections = Connections(limits.max_connections, limits.max_connections_per_ip)
        self.auth_guard = AuthGuard(limits.max_auth_failures, limits.auth_lockout)

    @property
    def message_size_limit(self) -> int:
        """The limit advertised in EHLO SIZE: ours, capped by what the transport accepts."""
        assert self.transport is not None
        return min(self.config.limits.max_message_size, self.transport.max_message_size)

    def bound_ports(self) -> dict[str, int]:
        """The port each SMTP listener got, by listener name: with port 0 configured the
        kernel picks one, and this (and the ``started`` log line) says which."""
        ports = {}
        for listener, server in zip(self.config.listeners, self.servers, strict=True):
            ports[listener.name] = server.sockets[0].getsockname()[1]
        return ports

    def http_ports(self) -> dict[str, int]:
        """The ports the HTTP listeners got (``metrics``, ``feedback``, ``console``), those
        running."""
        ports = {"metrics": self.metrics_port, "feedback": self.feedback_port,
                 "console": self.console_port}
        return {name: port for name, port in ports.items() if port is not None}

    async def start(self) -> None:
        cfg = self.config
        self._users = users.load(cfg.users_file, must_exist=users.required_by(cfg.listeners))
        # Before anything starts: a certificate that cannot be loaded is a ConfigError.
        self.tls = tls = (ServerTLS(cfg.tls.cert, cfg.tls.key)
                          if cfg.tls.cert and cfg.tls.key else None)
        self.suppression = await asyncio.to_thread(SuppressionList, cfg.suppression.database)
        self.policy = policy = Policy(cfg, self.suppression)
        share = self.share
        first = share.index == 0
        self.spool = Spool(cfg.queue.directory, share)
        backlog = await asyncio.to_thread(self.spool.open)
        self.transport = build(cfg.delivery)
        await self.transport.start()
        self.scheduler = Scheduler(self.spool, self.transport, cfg.queue,
                                   concurrency=cfg.delivery.concurrency,
                                   max_inflight_bytes=64 * 2**20 // share.count,
                                   max_send_rate=cfg.delivery.max_send_rate,
                                   rate_share=1 / share.count,
                                   on_failed=self._notify_sender)
        self.scheduler.load_backlog(backlog)
        # Opening may wait on the schema lock while other workers start: not on the loop.
        self.events = await asyncio.to_thread(EventStore, cfg.feedback.database)
        self.events.start()
        maillog.attach(self.events)
        if first:
            loop, scheduler = asyncio.get_running_loop(), self.scheduler

            def pause(reason: str) -> None:
                # The reputation guard decides in a worker thread; the scheduler lives on
                # the loop.
                loop.call_soon_threadsafe(scheduler.pause, reason)

            self.feedback = FeedbackService(
                cfg.feedback, self.events, self.suppression,
                ReputationGuard(self.events, cfg.feedback, pause),
                region=cfg.delivery.region,
                share=self._share_suppression if cfg.suppression.backend == "ses" else None)
            await self.feedback.start()
            if cfg.feedback.http is not None:
                await self._start_webhook(cfg, self.feedback)
        if cfg.suppression.backend == "ses" and first:
            self._background.append(asyncio.create_task(sessuppression.keep_in_step(
                cfg.delivery, self.suppression, cfg.suppression.sync_interval),
                name="suppression-sync"))
        await self.scheduler.start()
        for listener in cfg.listeners:
            handler = Handler(listener=listener, users=self._current_users, spool=self.spool,
                              policy=policy, limits=cfg.limits, hostname=cfg.hostname,
                              on_queued=self.scheduler.enqueue,
                              connections=self.connections, auth_guard=self.auth_guard,
                              auth_cache=self.auth_cache)
            self.handlers.append(handler)
            server = await listeners.start(
                listener, handler, hostname=cfg.hostname,
                tls=tls.context if tls is not None else None,
                data_size_limit=self.message_size_limit, limits=cfg.limits,
                reuse_port=share.count > 1)
            self.servers.append(server)
        if share.count > 1:  # the first process serves every process's gauges
            self._background.append(asyncio.create_task(self._publish_gauges(),
                                                        name="gauges"))
        if cfg.metrics is not None and first:
            self.metrics_server = WebServer("metrics", cfg.web)
            MetricsRoutes(self._readiness, self._refresh_gauges).add_to(self.metrics_server)
            self.metrics_port = await self.metrics_server.start(cfg.metrics.address,
                                                                cfg.metrics.port)
        if cfg.console is not None and first:
            await self._start_console(cfg, cfg.console)
        _log.info("started", listeners=self.bound_ports(), http=self.http_ports(),
                  transport=self.transport.name,
                  queued=len(backlog), users=len(list(self._users)),
                  max_message_size=self.message_size_limit)

    async def _start_webhook(self, cfg: Config, feedback: FeedbackService) -> None:
        http = cfg.feedback.http
        assert http is not None
        self.feedback_server = WebServer("feedback", cfg.web, max_body=sns.MAX_POST_BYTES)
        feedback.add_routes(self.feedback_server)
        tls = tlscontext.build(http.cert, http.key) if http.cert and http.key else None
        self.feedback_port = await self.feedback_server.start(http.address, http.port, tls)

    async def _start_console(self, cfg: Config, console: config_mod.ConsoleConfig) -> None:
        # Imported here: Jinja2 and the templates are loaded only by a relay that serves it.
        from relay import queueadmin
        from relay.smtp.auth import Authenticator
        from relay.web.console import Console
        from relay.web.console.data import Sources

        assert self.scheduler is not None and self.events is not None
        assert self.suppression is not None
        src = Sources(config=lambda: self.config, users=self._current_users,
                      spool=queueadmin.open_spool(cfg.queue.directory, cfg.workers),
                      scheduler=self.scheduler, events=self.events,
                      suppression=self.suppression, readiness=self._console_readiness)
        # The same guard and cache as SMTP AUTH: failures here count towards the lockout
        # there, and the other way round.
        app = Console(console, src, Authenticator(self._current_users, self.auth_guard,
                                                  self.auth_cache), self.auth_guard)
        self.console_server = WebServer("console", cfg.web, middlewares=[app.access.middleware])
        app.add_to(self.console_server)
        tls = self.tls.context if console.tls and self.tls is not None else None
        self.console_port = await self.console_server.start(console.address, console.port, tls)
        host = f"[{console.address}]" if ":" in console.address else console.address
        _log.info("console", url=f"{'https' if tls else 'http'}://{host}:{self.console_port}/")

    async def _console_readiness(self) -> tuple[bool, str]:
        """The readiness check, asked at most every 15 s (it may call the upstream)."""
        now = asyncio.get_running_loop().time()
        cached = self._console_ready
        if cached is None or now - cached[0] > 15.0:
            try:
                ok, detail = await asyncio.wait_for(self._readiness(), 5.0)
            except Exception as e:  # a check that breaks means: not ready
                ok, detail = False, f"check failed: {type(e).__name__}"
            self._console_ready = cached = (now, ok, detail)
        return cached[1], cached[2]

    async def _notify_sender(self, queue_id: str, envelope: Envelope,
                             record: dict[str, Any]) -> None:
        """Queue an RFC 3464 notice to the sender of a message that failed after its 250."""
        delivery = self.config.delivery
        if not delivery.bounce_notices or envelope.no_dsn or not delivery.bounce_from:
            return
        assert self.spool is not None and self.scheduler is not None
        try:
            headers = await asyncio.to_thread(self.spool.read_headers, queue_id, "failed")
            notice = dsn.build(queue_id=queue_id, sender=envelope.mail_from,
                               bounce_from=delivery.bounce_from,
                               hostname=self.config.hostname,
                               failed=record.get("failed", {}), original_headers=headers)
            draft = self.spool.draft()
            draft.write(notice)
            notice_id = await self.spool.commit(draft, Envelope(
                mail_from=delivery.bounce_from, rcpt_tos=(envelope.mail_from,), no_dsn=True))
        except (OSError, SpoolError) as e:
            # The failed message itself is safe in failed/; only its notice is missing.
            # (Raised further, this would reach the delivery worker as a bug about a
            # message that is no longer in active/.)
            _log.error("bounce_notice_failed", queue_id=queue_id, error=str(e),
                       hint="the message stays in failed/; `ses-relay queue show` says why")
            return
        maillog.bounce_notice(queue_id, notice_id, envelope.mail_from)
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
            await self.transport.quota()
        except DeliveryError as e:
            if e.code not in _READY_ANYWAY:
                return False, f"upstream: {e.code}: {e.hint}"
        return True, "ready"

    def _current_users(self) -> users.UserDB:
        assert self._users is not None
        return self._users

    async def reload(self) -> bool:
        """SIGHUP: new configuration, users, TLS certificates and policy, without dropping a
        session. An invalid new configuration is refused and the running one stays.

        Listeners, the queue, the transport and the suppression database are bound at
        start; a change to them is logged as needing a restart.
        """
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
        except (ConfigError, UsersFileError, OSError) as e:
            problems = e.problems if isinstance(e, ConfigError) else [str(e)]
            _log.error("reload_refused", problems=problems,
                       hint="the running configuration stays; fix the file and reload again")
            return False
        restart = [k for k in ("listeners", "queue", "delivery", "suppression", "workers")
                   if getattr(new, k) != getattr(old, k)]
        self.config = replace(new, listeners=old.listeners, queue=old.queue,
                              delivery=old.delivery, suppression=old.suppression)
        self._users = new_users
        if self.tls is not None and new_tls is not None:
            # New handshakes get the new certificate; sessions already up are untouched.
            self.tls.replace(new_tls)
        assert self.policy is not None
        self.policy.reconfigure(self.config)
        for handler in self.handlers:
            handler.reconfigure(self.config.limits, self.config.hostname)
        log.configure(new.log.format, new.log.level)
        _log.info("reloaded", users=len(list(new_users)),
                  **({"restart_needed_for": restart} if restart else {}))
        return True

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
        for web in (self.metrics_server, self.feedback_server, self.console_server):
            if web is not None:
                await web.stop()
        for task in self._background:
            task.cancel()
        if self.feedback is not None:
            await self.feedback.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.transport is not None:
            await self.transport.aclose()
        if self.suppression is not None:
            self.suppression.close()
        if self.spool is not None:
            await asyncio.to_thread(self.spool.close)
        if self.events is not None:
            maillog.attach(None)
            await asyncio.to_thread(self.events.close)
        _log.info("stopped")


def run(config: Config, share: Share = ALONE) -> int:
    """The process's event loop. (uvloop was measured twice, under bench/compare.py and
    bench/loadprofile.py, and gained nothing, see bench/RESULTS.md; asyncio's loop it is.)"""
    return asyncio.run(serve(config, share))


async def serve(config: Config, share: Share = ALONE) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code."""
    memory.tune_malloc()
    notifier = systemd.Notifier()
    relay = Relay(config, share)
    loop = asyncio.get_running_loop()
    # A SIGHUP while starting (the listeners are open before start() returns) would kill
    # the process with the signal's default action: remember it, reload once started.
    # (A worker gets SIGHUP from its supervisor only once READY; this is for a relay that
    # runs alone.)
    early_hup = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, early_hup.set)
    await relay.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(_reload(relay, notifier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if early_hup.is_set():
        on_hup()
    memory.freeze_startup_heap()
    if notifier.watchdog_interval:
        tasks.add(asyncio.create_task(_watchdog(notifier, notifier.watchdog_interval)))
    notifier.ready(f"accepting mail on {len(relay.servers)} listeners")
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        for task in tasks:
            task.cancel()
        await relay.stop()
    return 0


async def _reload(relay: Relay, notifier: systemd.Notifier) -> None:
    notifier.reloading()
    await relay.reload()
    notifier.ready("reloaded")


async def _watchdog(notifier: systemd.Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
