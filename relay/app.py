"""The composition root: the only module that knows every part and wires them together.

It owns start-up order (queue before listeners, so nothing is accepted that cannot be
stored), signals, and shutdown order (listeners first, then delivery, then the transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import Any

from relay import dsn, log, maillog, memory, users
from relay.config import Config
from relay.delivery import Scheduler
from relay.policy import Policy
from relay.smtp import listeners
from relay.smtp.handler import Handler
from relay.smtp.server import server_tls_context
from relay.spool import Envelope, Spool
from relay.suppression import SuppressionList
from relay.transports import Transport, build

_log = log.get("app")


@dataclass
class Relay:
    config: Config
    transport: Transport | None = None
    spool: Spool | None = None
    scheduler: Scheduler | None = None
    servers: list[asyncio.Server] = field(default_factory=list)
    suppression: SuppressionList | None = None
    _users: users.UserDB | None = None

    @property
    def message_size_limit(self) -> int:
        """The limit advertised in EHLO SIZE: ours, capped by what the transport accepts."""
        assert self.transport is not None
        return min(self.config.limits.max_message_size, self.transport.max_message_size)

    def bound_ports(self) -> dict[str, int]:
        ports = {}
        for listener, server in zip(self.config.listeners, self.servers, strict=True):
            ports[listener.name] = server.sockets[0].getsockname()[1]
        return ports

    async def start(self) -> None:
        cfg = self.config
        self._users = users.load(cfg.users_file)
        self.suppression = await asyncio.to_thread(SuppressionList, cfg.suppression.database)
        policy = Policy(cfg, self.suppression)
        self.spool = Spool(cfg.queue.directory)
        backlog = await asyncio.to_thread(self.spool.open)
        self.transport = build(cfg.delivery)
        await self.transport.start()
        self.scheduler = Scheduler(self.spool, self.transport, cfg.queue,
                                   concurrency=cfg.delivery.concurrency,
                                   max_send_rate=cfg.delivery.max_send_rate,
                                   on_failed=self._notify_sender)
        self.scheduler.load_backlog(backlog)
        await self.scheduler.start()
        tls = (server_tls_context(str(cfg.tls.cert), str(cfg.tls.key))
               if cfg.tls.cert and cfg.tls.key else None)
        for listener in cfg.listeners:
            handler = Handler(listener=listener, users=self._current_users, spool=self.spool,
                              policy=policy, limits=cfg.limits, hostname=cfg.hostname,
                              on_queued=self.scheduler.enqueue)
            server = await listeners.start(
                listener, handler, hostname=cfg.hostname, tls=tls,
                data_size_limit=self.message_size_limit,
                idle_timeout=cfg.limits.idle_timeout)
            self.servers.append(server)
        _log.info("started", listeners=self.bound_ports(), transport=self.transport.name,
                  queued=len(backlog), users=len(list(self._users)),
                  max_message_size=self.message_size_limit)

    async def _notify_sender(self, queue_id: str, envelope: Envelope,
                             record: dict[str, Any]) -> None:
        """Queue an RFC 3464 notice to the sender of a message that failed after its 250."""
        delivery = self.config.delivery
        if not delivery.bounce_notices or envelope.no_dsn or not delivery.bounce_from:
            return
        assert self.spool is not None and self.scheduler is not None
        _, data = await asyncio.to_thread(self.spool.read, queue_id, "failed")
        notice = dsn.build(queue_id=queue_id, sender=envelope.mail_from,
                           bounce_from=delivery.bounce_from, hostname=self.config.hostname,
                           failed=record.get("failed", {}),
                           original_headers=data.split(b"\r\n\r\n", 1)[0])
        draft = self.spool.draft()
        draft.write(notice)
        notice_id = await self.spool.commit(draft, Envelope(
            mail_from=delivery.bounce_from, rcpt_tos=(envelope.mail_from,), no_dsn=True))
        maillog.bounce_notice(queue_id, notice_id, envelope.mail_from)
        self.scheduler.enqueue(notice_id)

    def _current_users(self) -> users.UserDB:
        assert self._users is not None
        return self._users

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.transport is not None:
            await self.transport.aclose()
        if self.suppression is not None:
            self.suppression.close()
        _log.info("stopped")


async def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code."""
    memory.fix_mmap_threshold()
    relay = Relay(config)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await relay.stop()
    return 0
