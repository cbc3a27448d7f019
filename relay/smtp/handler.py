"""The session handler: thin glue from SMTP steps to policy, authentication and the queue.

Each hook decides at the earliest step it can, answers with a composed reply from
``replies``, and logs the reason. Anything unexpected becomes ``451 4.3.0`` (never a 5xx:
our own trouble must not make a client give up on a message).
"""

from __future__ import annotations

import asyncio
import ipaddress
from base64 import b64decode
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult

from relay import log, maillog
from relay.addresses import AddressError, normalize
from relay.config import Listener
from relay.errors import SpoolError
from relay.smtp import replies
from relay.smtp.server import DataProblem, RelaySMTP
from relay.spool import Draft, Envelope, Spool
from relay.users import UserDB

_log = log.get("smtp")


class Handler:
    """Shared by every session of one listener."""

    def __init__(self, *, listener: Listener, users: Callable[[], UserDB], spool: Spool,
                 on_queued: Callable[[str], None]) -> None:
        self.listener = listener
        self._users = users
        self._spool = spool
        self._on_queued = on_queued

    # -- errors

    async def handle_exception(self, error: Exception) -> str:
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
        return await self._check(server, "PLAIN", parts[1], parts[2])

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
        return await self._check(server, "LOGIN", login, password)

    async def _check(self, server: RelaySMTP, mechanism: str, login: bytes,
                     password: bytes) -> AuthResult:
        try:
            name = login.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        db = self._users()
        # scrypt takes tens of milliseconds: run it in a thread so other sessions keep going.
        ok = bool(name) and await asyncio.to_thread(db.authenticate, name, password)
        assert server.session is not None
        maillog.auth(server.session.peer, name, ok, mechanism)
        if not ok:
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        return AuthResult(success=True, auth_data=name)

    # -- envelope

    def _may_submit(self, session: Any) -> bool:
        if session.authenticated:
            return True
        if self.listener.auth == "required":
            return False
        # Unauthenticated submission only from trusted networks: never an open relay.
        try:
            ip = ipaddress.ip_address(session.peer[0])
        except (TypeError, ValueError, IndexError):
            return False
        return any(ip in net for net in self.listener.trusted_networks)

    async def handle_MAIL(self, server: RelaySMTP, session: Any, envelope: Any,
                          address: str, mail_options: list[str]) -> str:
        if not self._may_submit(session):
            maillog.rejected(session.peer, "MAIL", replies.AUTH_REQUIRED, "not authenticated")
            return replies.AUTH_REQUIRED
        try:
            address = normalize(address)
        except AddressError as e:
            return self._bad_address(session, "MAIL", e)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.MAIL_OK

    async def handle_RCPT(self, server: RelaySMTP, session: Any, envelope: Any,
                          address: str, rcpt_options: list[str]) -> str:
        try:
            address = normalize(address)
        except AddressError as e:
            return self._bad_address(session, "RCPT", e)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    def _bad_address(self, session: Any, step: str, e: AddressError) -> str:
        reply = replies.NON_ASCII_ADDRESS if e.non_ascii else replies.BAD_ADDRESS
        maillog.rejected(session.peer, step, reply, e.reason)
        return reply

    # -- DATA: the server streams into the draft, we commit it

    async def open_draft(self, server: RelaySMTP, session: Any, envelope: Any) -> Draft | str:
        try:
            return self._spool.draft()
        except SpoolError as e:
            maillog.queue_failed(session.peer, str(e))
            return replies.TEMPORARY

    async def close_draft(self, server: RelaySMTP, session: Any, envelope: Any, draft: Draft,
                          problem: DataProblem | None) -> str:
        if problem is not None:
            maillog.rejected(session.peer, "DATA", problem.value, problem.name.lower())
            return problem.value
        user = session.auth_data if session.authenticated else None
        maillog.received(session.peer, user, envelope.mail_from, envelope.rcpt_tos, draft.size)
        record = Envelope(mail_from=envelope.mail_from, rcpt_tos=tuple(envelope.rcpt_tos),
                          user=user, peer=str(session.peer[0]), listener=self.listener.name)
        try:
            queue_id = await self._spool.commit(draft, record)
        except SpoolError as e:
            maillog.queue_failed(session.peer, str(e))
            return replies.TEMPORARY
        maillog.queued(queue_id, record.mail_from, record.rcpt_tos, draft.size)
        self._on_queued(queue_id)
        return replies.QUEUED.format(queue_id=queue_id)
