"""A scripted SES SMTP endpoint on 127.0.0.1 with real TLS (aiosmtpd), for the smtp transport.

It speaks like email-smtp.<region>.amazonaws.com: TLS (STARTTLS or implicit), AUTH
before MAIL, one reply per RCPT, "250 Ok <message-id>" after DATA, and SES's error texts
when a test scripts them. It records what it accepted, so a test can tell what reached it.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USER = "AKIASMTPUSEREXAMPLE"
PASSWORD = "BPkCbtTKtLE+ExampleSmtpPassword/0123456789ab"  # test credential


@dataclass
class Received:
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    data: bytes


@dataclass
class FakeSESSMTP:
    """A scripted SES SMTP endpoint; set the reply fields before a test sends."""

    tls: str
    username: str = USER
    password: str = PASSWORD
    port: int = 0  # the port it got, once started
    # Scripted answers: per recipient address, to MAIL, and to the end of DATA.
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str | None = None
    # What it saw.
    peers: set[tuple[str, int]] = field(default_factory=set)
    logins: list[tuple[str, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    quits: int = 0

    @property
    def sessions(self) -> int:
        """Connections that got as far as EHLO."""
        return len(self.peers)

    # -- aiosmtpd hooks (run on the controller's loop)

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.peers.add(session.peer)  # the EHLO after STARTTLS comes from the same peer
        session.host_name = hostname
        return responses

    async def handle_QUIT(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    def authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        # SES takes credentials only over TLS, whichever way TLS was started.
        over_tls = server.transport.get_extra_info("sslcontext") is not None
        ok = over_tls and (login, password) == (self.username, self.password)
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 on failure

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        self.commands.append(f"MAIL {address}")
        if not session.authenticated:
            return "530 Authentication required"
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 Ok"

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        self.commands.append(f"RCPT {address}")
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 Ok"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.commands.append("DATA")
        if self.data_reply:
            return self.data_reply
        self.messages.append(Received(envelope.mail_from, list(envelope.mail_options),
                                      list(envelope.rcpt_tos), envelope.original_content))
        message_id = f"0100018c{uuid.uuid4().hex}-000000"
        self.message_ids.append(message_id)
        return f"250 Ok {message_id}"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


class PortZeroController(Controller):
    """aiosmtpd's Controller on port 0: it learns the port the kernel gave as it binds
    (Controller itself connects to ``self.port`` to check the server is up)."""

    def _create_server(self) -> Any:
        async def create() -> Any:
            server = await super(PortZeroController, self)._create_server()
            self.port = server.sockets[0].getsockname()[1]
            return server
        return create()


def start_fake(fake: FakeSESSMTP, cert: Path, key: Path) -> Controller:
    tls = server_context(cert, key)
    controller = PortZeroController(
        fake, hostname="127.0.0.1", port=0, server_hostname="fake-ses.test",
        ssl_context=tls if fake.tls == "implicit" else None,
        tls_context=tls if fake.tls == "starttls" else None,
        require_starttls=False,
        # AUTH is enforced by handle_MAIL and the authenticator (TLS checked there):
        # aiosmtpd's own auth_required without auth_require_tls warns, and on implicit
        # TLS it cannot see the TLS layer.
        auth_required=False, auth_require_tls=False,
        authenticator=fake.authenticate)
    controller.start()
    fake.port = controller.port
    return controller
