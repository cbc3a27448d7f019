"""The session handler: thin glue from SMTP steps to policy, authentication and the queue.

Each hook decides at the earliest step it can, answers with a composed reply from
``replies``, and logs the reason. Anything unexpected becomes ``451 4.3.0`` (never a 5xx:
our own trouble must not make a client give up on a message).
"""

from __future__ import annotations

import functools
import ipaddress
from base64 import b64decode
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult, TLSSetupException

from relay import log, maillog
from relay.addresses import AddressError, normalize
from relay.authcache import SuccessCache
from relay.config import Limits, Listener
from relay.errors import SpoolError
from relay.limits import LOCKED_OUT, TOO_MANY_CONNECTIONS, AuthGuard, Connections
from relay.message import HeaderError, rewrite
from relay.policy import NULL_SENDER_REFUSED, Policy
from relay.queuespace import QueueSpace, declared_size
from relay.smtp import proxy, replies
from relay.smtp.auth import Authenticator
from relay.smtp.server import DataProblem, RelayEnvelope, RelaySMTP
from relay.spool import Draft, Envelope, Spool
from relay.userlimits import Ledger
from relay.users import User, UserDB

_log = log.get("smtp")


def _ip(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class Handler:
    """Shared by every session of one listener."""

    def __init__(self, *, listener: Listener, users: Callable[[], UserDB], spool: Spool,
                 policy: Policy, limits: Limits, hostname: str,
                 on_queued: Callable[[str], None], connections: Connections,
                 auth_guard: AuthGuard, auth_cache: SuccessCache,
                 ledger: Ledger | None = None, space: QueueSpace | None = None) -> None:
        self.listener = listener
        self.live: set[RelaySMTP] = set()  # sessions open now, for a clean shutdown
        self._connections = connections
        self._guard = auth_guard
        self._auth = Authenticator(users, auth_guard, auth_cache)
        self._users = users
        self._spool = spool
        self._policy = policy
        self._hostname = hostname
        self._on_queued = on_queued
        self._ledger = ledger or Ledger(None)
        self._space = space
        # Whether a client address is in trusted_networks (fixed for the listener's
        # life), remembered: parsing the address for every MAIL was 1% of the event loop's
        # samples (py-spy under bench/loadprofile.py, bench/RESULTS.md).
        self._trusted = functools.lru_cache(maxsize=4096)(self._in_trusted_networks)
        self.reconfigure(limits, hostname)

    def reconfigure(self, limits: Limits, hostname: str) -> None:
        """New limits for sessions from now on (SIGHUP)."""
        self._hostname = hostname
        self.normalize_line_endings = limits.line_endings == "normalize"
        self.max_header_size = limits.max_header_size

    def _user(self, session: Any) -> User | None:
        if not session.authenticated:
            return None
        return self._users().get(session.auth_data)

    # -- connections

    def connection_opened(self, session: Any, server: RelaySMTP) -> str | None:
        """Count the connection, at the TCP accept; the reply refusing it, when it is one
        too many."""
        self.live.add(server)
        ip = _ip(session.peer)
        session.client_ip = ip
        reply = self._connections.opened(ip)
        if server.via_balancer:
            # The client is known once the PROXY header names it (proxied): until then
            # only the cap in all applies, not the balancer's own per-client cap.
            return reply if reply == TOO_MANY_CONNECTIONS else None
        return self._admitted(session, reply)

    def _admitted(self, session: Any, reply: str | None) -> str | None:
        if reply is None and self._guard.locked(session.client_ip):
            reply = LOCKED_OUT
        if reply is not None:
            maillog.rejected(session.peer, "CONNECT", reply, "limit")
        else:
            maillog.connected(session.peer, self.listener.name)
        return reply

    def connection_closed(self, session: Any, server: RelaySMTP) -> None:
        self.live.discard(server)
        self._ledger.abandon(session)
        self._connections.closed(session.client_ip)

    def proxied(self, session: Any, header: proxy.Header, reply: str | None) -> str | None:
        """Behind a load balancer the client is the one the PROXY header names: limits,
        lockouts, trusted_networks and the log go by its address from now on."""
        if header.client is not None:  # else the balancer's own (health check)
            ip = header.client[0]
            moved = self._connections.moved(session.client_ip, ip)
            session.client_ip = ip
            session.peer = proxy.Peer(header.client, session.peer)
            reply = reply or moved
        return self._admitted(session, reply)

    def bad_proxy_header(self, session: Any, error: str) -> None:
        maillog.proxy_refused(session.peer, error)

    def forged_proxy(self, session: Any) -> str:
        """A PROXY header from an address not in proxy_from: the reply closing it."""
        return self._refuse(session, "CONNECT", proxy.FORGED,
                            "PROXY header from an address not in proxy_from")

    def tls_failed(self, session: Any, error: str) -> None:
        maillog.tls_failed(session.peer, error)

    # -- errors

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that does not trust our certificate, or speaks no common TLS
            # version: its business, not a fault of ours (aiosmtpd closes the connection).
            _log.info("tls_failed", error=repr(error.__cause__ or error))
            return replies.TEMPORARY
        _log.error("session_error", error=repr(error), exc_info=error)
        return replies.TEMPORARY

    # -- authentication (aiosmtpd looks up auth_<MECHANISM> on the handler)

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:  # two-step, as PHPMailer does it: credentials after a 334
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1], validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False, message=replies.AUTH_BAD_ENCODING)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            return AuthResult(success=False, handled=False, message=replies.AUTH_BAD_ENCODING)
        authzid, login, password = parts
        return await self._auth.check(server, "PLAIN", login, password, authzid=authzid)

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = b64decode(args[1], validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False, message=replies.AUTH_BAD_ENCODING)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._auth.check(server, "LOGIN", login, password)

    # -- envelope

    def _may_submit(self, session: Any) -> bool:
        if session.authenticated:
            return True
        if self.listener.auth == "required":
            return False
        # Unauthenticated submission only from trusted networks: never an open relay.
        return self._trusted(str(getattr(session, "client_ip", "")))

    def _in_trusted_networks(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(ip in net for net in self.listener.trusted_networks)

    def null_sender(self, server: RelaySMTP, session: Any) -> str:
        """The address to use for MAIL FROM:<>, or the reply refusing it."""
        if not self._may_submit(session):
            return self._refuse(session, "MAIL", replies.AUTH_REQUIRED, "not authenticated")
        rewrite = self._policy.null_sender_rewrite
        if rewrite is None:
            return self._refuse(session, "MAIL", NULL_SENDER_REFUSED, "null sender")
        return rewrite

    async def handle_MAIL(self, server: RelaySMTP, session: Any, envelope: Any,
                          address: str, mail_options: list[str]) -> str:
        self._ledger.abandon(session)  # a transaction before this one ended unqueued
        if not self._may_submit(session):
            return self._refuse(session, "MAIL", replies.AUTH_REQUIRED, "not authenticated")
        if "SMTPUTF8" in mail_options:
            return self._refuse(session, "MAIL", replies.NO_SMTPUTF8, "SMTPUTF8 requested")
        try:
            address = normalize(address)
        except AddressError as e:
            return self._bad_address(session, "MAIL", e)
        verdict = self._policy.sender(self._user(session), address)
        if verdict.accepted and self._space is not None:  # queue.min_free
            verdict = self._space.check(declared_size(mail_options))
        if not verdict.accepted:
            assert verdict.reply is not None
            return self._refuse(session, "MAIL", verdict.reply, verdict.reason, sender=address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.MAIL_OK

    async def handle_RCPT(self, server: RelaySMTP, session: Any, envelope: Any,
                          address: str, rcpt_options: list[str]) -> str:
        try:
            address = normalize(address)
        except AddressError as e:
            return self._bad_address(session, "RCPT", e)
        # The same recipient again (domains compare without case): SES would send one copy
        # per mention. Postfix answers 250 and keeps it once; so does this, and the limit
        # counts each recipient once.
        local, _, domain = address.rpartition("@")
        key = f"{local}@{domain.lower()}"
        if key in envelope.rcpt_keys:
            return replies.RCPT_OK
        verdict = await self._policy.recipient(address, len(envelope.rcpt_tos))
        if verdict.accepted and not verdict.drop:  # only what will be sent is counted
            verdict = await self._ledger.recipient(session, self._user(session))
        if verdict.drop:
            maillog.dropped(session.peer, address, verdict.reason)
            envelope.rcpt_keys.add(key)
            envelope.dropped.append(address)
            return replies.RCPT_OK
        if not verdict.accepted:
            assert verdict.reply is not None
            if verdict.limit:
                maillog.user_limited(session.auth_data, verdict.limit)
            return self._refuse(session, "RCPT", verdict.reply, verdict.reason, rcpt=address)
        envelope.rcpt_keys.add(key)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    def bad_argument(self, session: Any, step: str) -> str:
        return self._refuse(session, step, replies.BAD_ADDRESS, "control character in address")

    def _refuse(self, session: Any, step: str, reply: str, reason: str, **kw: str) -> str:
        maillog.rejected(session.peer, step, reply, reason, **kw)
        return reply

    def _bad_address(self, session: Any, step: str, e: AddressError) -> str:
        reply = replies.NON_ASCII_ADDRESS if e.non_ascii else replies.BAD_ADDRESS
        return self._refuse(session, step, reply, e.reason)

    async def process_headers(self, server: RelaySMTP, session: Any,
                              envelope: RelayEnvelope, block: bytes) -> bytes | str:
        """Check and rewrite the header section; return it, or the reply refusing it."""
        user = self._user(session)
        assert envelope.mail_from is not None  # aiosmtpd refuses DATA without MAIL
        try:
            headers = rewrite(block, hostname=self._hostname,
                              default_from=self._policy.default_from(user, envelope.mail_from),
                              ses_headers=self._policy.ses_headers_allowed(user))
        except HeaderError as e:
            return self._refuse(session, "DATA", e.reply, "header")
        verdict = self._policy.header_from(user, headers.from_value, headers.sender_value)
        if not verdict.accepted:
            assert verdict.reply is not None
            return self._refuse(session, "DATA", verdict.reply, verdict.reason)
        maillog.headers_adjusted(session.peer, user.name if user else None,
                                 from_added=envelope.mail_from if headers.from_added else None,
                                 ses_headers_ignored=headers.ses_headers_ignored)
        envelope.configuration_set, envelope.tags = self._policy.ses_options(
            user, headers.configuration_set, headers.tags)
        return headers.block

    # -- DATA: the server streams into the draft, we commit it

    async def open_draft(self, server: RelaySMTP, session: Any, envelope: Any) -> Draft | str:
        try:
            return self._spool.draft()
        except SpoolError as e:
            maillog.queue_failed(session.peer, str(e))
            return replies.TEMPORARY

    async def close_draft(self, server: RelaySMTP, session: Any, envelope: RelayEnvelope,
                          draft: Draft, problem: DataProblem | str | None) -> str:
        # Taken before the commit: one cut short (the client gone) may have queued the
        # message, and then its recipients stay counted.
        charges = self._ledger.take(session)
        reply = await self._commit(server, session, envelope, draft, problem)
        if not reply.startswith("250"):
            self._ledger.give_back(charges)
        return reply

    async def _commit(self, server: RelaySMTP, session: Any, envelope: RelayEnvelope,
                      draft: Draft, problem: DataProblem | str | None) -> str:
        if isinstance(problem, DataProblem):
            return self._refuse(session, "DATA", problem.value, problem.name.lower())
        if problem is not None:
            return problem  # refused by process_headers, already logged
        user = session.auth_data if session.authenticated else None
        assert envelope.mail_from is not None  # aiosmtpd refuses DATA without MAIL
        maillog.received(session.peer, user, envelope.mail_from, envelope.rcpt_tos, draft.size)
        if not envelope.rcpt_tos:  # every recipient was dropped by policy
            maillog.discarded(session.peer, envelope.mail_from, envelope.dropped)
            return replies.ACCEPTED
        record = Envelope(mail_from=envelope.mail_from,
                          rcpt_tos=self._policy.final_recipients(envelope.rcpt_tos),
                          user=user, peer=str(session.peer[0]), listener=self.listener.name,
                          configuration_set=envelope.configuration_set, tags=envelope.tags,
                          no_dsn=envelope.null_sender)
        try:
            queue_id = await self._spool.commit(draft, record)
        except SpoolError as e:
            maillog.queue_failed(session.peer, str(e))
            return replies.TEMPORARY
        maillog.queued(queue_id, record.mail_from, record.rcpt_tos, draft.size,
                       since_connect=server.loop.time() - server.started, user=user)
        # After the 250 is written, not before: telling the delivery process first wakes
        # it, and on a busy core the woken process may run ahead of us while the client
        # waits (under strace, 0.6-0.9 ms between the two sends; without it the gain is
        # within the noise: bench/RESULTS.md, "the 250 before the delivery process is
        # told"). The message is durable either way, and the queue scan finds it too.
        server.loop.call_soon(self._on_queued, queue_id)
        return replies.QUEUED.format(queue_id=queue_id)
