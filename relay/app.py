"""The composition root: the only module that knows every part and wires them together.

It owns start-up order (queue before listeners, so nothing is accepted that cannot be
stored), signals, and shutdown order (listeners first, then delivery, then the transport).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay import log, maillog, metrics, queued, running, supervisor, users
from relay.authcache import SuccessCache
from relay.config import Config
from relay.errors import DeliveryError
from relay.eventstore import EventStore, open_store
from relay.limits import AuthGuard, Connections
from relay.metrics import CachedCheck
from relay.policy import Policy
from relay.queuespace import QueueSpace
from relay.smtp.tlscontext import ServerTLS
from relay.spool import ALONE, Envelope, Share, Spool
from relay.suppression import SuppressionList
from relay.transports.base import MAX_MESSAGE_SIZE, Transport
from relay.userlimits import UserLimits

# Each role imports its own side where it starts it (relay.queueshare.Share): a process
# that only takes mail (delivery.process: separate) never loads the AWS SDK or aiohttp, one
# that only delivers never loads aiosmtpd. Measured: relay.app with every side imported,
# 64 MB of RSS; the SMTP side alone, 30 MB (bench/RESULTS.md, issue 16).
if TYPE_CHECKING:
    from relay.delivery import Scheduler
    from relay.feedback.service import FeedbackService
    from relay.ratelimit_redis import SharedBucket
    from relay.smtp import listeners
    from relay.smtp.handler import Handler
    from relay.web.relayweb import RelayWeb
    from relay.web.server import WebServer
    from relay.web.sites import Sites

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
    # The first process's only (relay.queueshare.Share.first); None in the others.
    sites: Sites | None = None
    events: EventStore | None = None
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    feedback: FeedbackService | None = None
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    web: RelayWeb | None = None  # what the first process serves over HTTP
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
        return self.sites.ports() if self.sites is not None else {}

    @property
    def console_server(self) -> WebServer | None:
        return self.sites.server("console") if self.sites is not None else None

    @property
    def console_port(self) -> int | None:
        return self.sites.port("console") if self.sites is not None else None

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
        self.events = await asyncio.to_thread(open_store, cfg)
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
            await asyncio.to_thread(users.dummy_hash)  # before a login could pay for it
            await self._start_listeners()
        # Each process that delivers publishes its gauges for the first one to serve.
        if self.share.several and self.scheduler is not None:
            self._background.append(asyncio.create_task(self._publish_gauges(),
                                                        name="gauges"))
        if self.share.first:
            from relay.web.relayweb import RelayWeb  # aiohttp: only where HTTP is served
            from relay.web.sites import Sites

            self.web, self.sites = RelayWeb(self), Sites()
            await self.sites.start(self.web.sites(cfg))
        await self.record_running()
        if self.web is not None:
            self.web.log_console()
        _log.info("started", listeners=self.bound_ports(), http=self.http_ports(),
                  transport=cfg.delivery.transport,
                  queued=len(backlog), users=len(list(self._users)),
                  max_message_size=self.message_size_limit)

    async def _start_transport(self, backlog: list[str]) -> None:
        from relay.delivery import Scheduler
        from relay.transports import build

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
        from relay import reputationcw, sessuppression
        from relay.feedback.service import FeedbackService
        from relay.reputation import ReputationGuard

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
            ReputationGuard(self.events, cfg.feedback, pause, spool=self.spool,
                            cloudwatch=reputationcw.for_config(cfg.feedback, cfg.delivery)),
            region=cfg.delivery.region, identity=cfg.delivery,
            state=cfg.queue.directory.parent,
            share=self._share_suppression if cfg.suppression.backend == "ses" else None)
        await self.feedback.start()
        if cfg.suppression.backend == "ses":
            self._background.append(asyncio.create_task(sessuppression.keep_in_step(
                cfg.delivery, self.suppression, cfg.suppression.sync_interval),
                name="suppression-sync"))

    async def _start_listeners(self) -> None:
        from relay.smtp import listeners
        from relay.smtp.handler import Handler
        from relay.userlimits import DB_NAME as USER_LIMITS_DB
        from relay.userlimits import Ledger

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
            handler = Handler(listener=listener, users=self.current_users, spool=self.spool,
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

    async def record_running(self) -> None:
        """The running configuration, for `ses-relay check-config --running`."""
        if not running.records(self.share):
            return
        try:
            bound = running.bound_keys(self.bound_ports(), self.http_ports())
            await asyncio.to_thread(running.write, self.config, supervisor.service_pid(),
                                    bound, self.share)
        except OSError as e:
            _log.warning("running_config_not_recorded", error=str(e),
                         hint="`check-config --running` cannot compare with this relay")

    async def _notify_sender(self, queue_id: str, envelope: Envelope,
                             record: dict[str, Any]) -> None:
        """Queue an RFC 3464 notice to the sender of a message that failed after its 250."""
        from relay import dsn

        assert self.spool is not None and self.scheduler is not None
        notice_id = await dsn.queue_notice(self.spool, self.config.delivery,
                                           self.config.hostname, queue_id, envelope, record)
        if notice_id is not None:
            self.scheduler.enqueue(notice_id)

    async def _share_suppression(self, entries: list[tuple[str, str]]) -> None:
        """backend: ses. What feedback suppressed here goes to SES's list at once."""
        from relay import sessuppression

        try:
            async with sessuppression.SESSuppression(self.config.delivery) as ses:
                await ses.push(entries)
        except DeliveryError as e:
            _log.warning("suppression_push_failed", code=e.code, hint=e.hint,
                         addresses=len(entries))

    def refresh_gauges(self) -> None:
        if self.scheduler is not None:
            metrics.QUEUE_DEPTH.set(self.scheduler.pending)
            metrics.QUEUE_OLDEST.set(self.scheduler.oldest_age())
            metrics.SEND_RATE_LIMIT.set(self.scheduler.rate or 0)

    async def _publish_gauges(self) -> None:
        while True:
            self.refresh_gauges()
            await asyncio.sleep(_GAUGES_EVERY)

    async def _readiness(self) -> tuple[bool, str]:
        """Ready: the queue takes writes and the upstream answers with our credentials."""
        from relay.transports import probe

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

    def current_users(self) -> users.UserDB:
        assert self._users is not None
        return self._users

    def use_users(self, db: users.UserDB) -> None:
        """A reloaded users file: the next AUTH and MAIL FROM read it."""
        self._users = db

    async def reload(self) -> bool:
        """SIGHUP: apply what can be applied live (relay.reloading says what and how)."""
        from relay import reloading

        async with self._reloading:  # one SIGHUP after the other
            return await reloading.reload(self)

    def apply_limits(self) -> None:
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
        if self.sites is not None:
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
            await asyncio.to_thread(running.forget, self.config.queue.directory,
                                    supervisor.service_pid())
        _log.info("stopped")


def _nobody(queue_id: str) -> None:
    """A process that only takes mail, started without the channel (by hand): the
    delivery process's queue scan finds the message."""
