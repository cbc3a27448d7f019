"""One session with the SES SMTP endpoint, up to the mail transaction: connect, TLS
(implicit, or STARTTLS that the server must offer), EHLO, AUTH; and the readiness probe,
which stops before AUTH.

TLS is never optional: on a ``starttls`` upstream a server that does not offer STARTTLS
gets nothing, since credentials and mail would otherwise cross the network in clear (a
middlebox stripping STARTTLS looks exactly like that). The certificate is checked against
the system trust store plus ``delivery.smtp.ca_file``, with the host name.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from relay.errors import ConfigError, DeliveryError
from relay.transports.smtperrors import classify, no_starttls

# What may appear in EHLO (and in a header value we add): printable ASCII, no spaces.
PRINTABLE = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class Endpoint:
    """Where the SMTP upstream is and how TLS is started there."""

    host: str
    port: int
    tls: str  # starttls | implicit | none
    context: ssl.SSLContext
    timeout: float
    ehlo_name: str


class Client(aiosmtplib.SMTP):
    """aiosmtplib's client, but closing drops the connection at once.

    aiosmtplib's close() starts a TLS shutdown that waits for the server's close_notify
    (up to 30 s) before the socket is closed. After QUIT, or after a failure, nothing more
    is to be said, so the socket goes now, as smtplib does.
    """

    def close(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()
        super().close()


def client(endpoint: Endpoint, timeout: float | None = None) -> Client:
    # start_tls=False: STARTTLS is done (and required) by open(), never opportunistic.
    return Client(hostname=endpoint.host, port=endpoint.port,
                  use_tls=endpoint.tls == "implicit", start_tls=False,
                  tls_context=endpoint.context, timeout=timeout or endpoint.timeout,
                  local_hostname=endpoint.ehlo_name)


async def open_session(smtp: aiosmtplib.SMTP, endpoint: Endpoint) -> None:
    """Connect, EHLO, and (starttls) STARTTLS and EHLO again."""
    await smtp.connect()
    await smtp.ehlo()
    if endpoint.tls == "starttls":
        if not smtp.supports_extension("starttls"):
            raise no_starttls(endpoint.host, endpoint.port)
        await smtp.starttls()
        await smtp.ehlo()  # RFC 3207: what the server said before TLS is forgotten


async def authenticate(smtp: aiosmtplib.SMTP, username: str, password: str) -> None:
    # SES offers PLAIN and LOGIN. One method, one attempt: aiosmtplib's login() would try
    # every method in turn and double the failed attempts a wrong password costs.
    methods = smtp.server_auth_methods
    if "plain" in methods:
        await smtp.auth_plain(username, password)
    elif "login" in methods:
        await smtp.auth_login(username, password)
    else:
        raise DeliveryError(f"the upstream offers no AUTH PLAIN or LOGIN ({methods})",
                            permanent=False, code="AuthenticationFailed",
                            hint="is delivery.smtp.host an SES SMTP endpoint?")


async def quit_session(smtp: aiosmtplib.SMTP, wait: float) -> None:
    try:
        await smtp.quit(timeout=wait)
    except Exception:  # noqa: S110  # the message is delivered; a lost goodbye is not an error
        pass
    finally:
        smtp.close()


async def probe(endpoint: Endpoint, limit: float, region: str | None) -> None:
    """Connect, start TLS as configured, EHLO, QUIT, all within *limit* seconds; raise
    DeliveryError if that fails. No AUTH: a readiness check must not spend login attempts
    (SES counts failures) nor send credentials every few seconds."""
    smtp = client(endpoint, limit)
    try:
        async with asyncio.timeout(limit):
            await open_session(smtp, endpoint)
            await smtp.quit()
    except Exception as e:
        raise classify(e, region) from e
    finally:
        smtp.close()


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system trust store plus *ca_file*, host names checked, TLS 1.2 or newer."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError([f"delivery.smtp.ca_file: cannot load {ca_file}: {e}"]) from e
    return context


def ehlo_name() -> str:
    # gethostname() needs no DNS, unlike aiosmtplib's default getfqdn(), which can block
    # for seconds; SES does not check the EHLO name.
    name = socket.gethostname()
    return name if name.isascii() and PRINTABLE.fullmatch(name) else "localhost"
