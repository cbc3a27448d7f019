"""Delivery to the SES SMTP endpoint (``email-smtp.<region>.amazonaws.com``) with aiosmtplib.

For networks where only SMTP egress is allowed, or where the operator holds SES SMTP
credentials rather than API access. Each message gets its own connection: connect, EHLO,
STARTTLS, EHLO, AUTH, MAIL, one RCPT per recipient, DATA, QUIT. That costs a TCP and TLS
handshake per message, but no pooled connection can go stale under a worker, and every
attempt starts from a known state; correctness first.

The parts live beside this module: the session up to AUTH and the readiness probe
(``smtpsession``), the account's quota over the SES API when IAM credentials allow it
(``smtpaccount``), and the one place where SMTP, TLS and socket errors become
DeliveryErrors (``smtperrors``).

Envelope addresses are checked here before anything is written: aiosmtplib puts them on the
command line as given, so a CR, LF or ``>`` in an address could smuggle commands upstream.
SES answers per recipient, so RCPT replies are honoured one by one (``SendResult.refused``).

The SES options the API transports pass as parameters (configuration set, tags, sending
authorisation ARNs) travel as ``X-SES-*`` headers on the SMTP interface; they are prepended
only when set, so otherwise the message goes out byte for byte.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiosmtplib

from relay import aws, sescreds
from relay.config import DeliveryConfig, SmtpUpstream
from relay.errors import ConfigError, DeliveryError
from relay.message import valid_configuration_set, valid_tag
from relay.spool import Envelope
from relay.transports import smtpsession
from relay.transports.base import Quota, SendResult
from relay.transports.errors import classify as classify_aws
from relay.transports.smtpaccount import Account
from relay.transports.smtperrors import classify, nobody_accepted, reply_error
from relay.transports.smtpsession import PRINTABLE, Endpoint, tls_context

__all__ = ["MAX_RAW_SIZE", "SMTPTransport", "arn_headers", "configured_login", "tls_context"]

# SES SMTP takes 40 MB after base64, which inflates by 4/3.
MAX_RAW_SIZE = 30_000_000
# DATA's final reply can only come once the whole message has been written, so its timeout
# grows with the size: a 30 MB message on a slow uplink is not a dead server.
_MIN_UPLOAD_RATE = 100_000  # bytes per second
# QUIT after a 250 to DATA is a courtesy: the message is SES's already.
_QUIT_TIMEOUT = 5.0
# The readiness probe answers within the readiness check's own deadline (metrics.CachedCheck).
_PROBE_TIMEOUT = 3.0


class SMTPTransport:
    name = "smtp"
    max_message_size = MAX_RAW_SIZE
    max_recipients = 50
    # The message, and aiosmtplib's dot-stuffed, line-end-normalised copy of it, with the
    # transport's write buffer of it when the upstream reads slower than we write.
    memory_per_byte = 3.0

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self.host = config.smtp.hostname(config.region)
        self._endpoint: Endpoint | None = None
        # Configured SMTP credentials, or None to derive them from the IAM credentials.
        self._login: tuple[str, str] | None = None
        self._session: Any = None
        self._arn_headers = b""
        self._account = Account(config)

    async def start(self) -> None:
        if not self.config.region:
            raise ConfigError(["delivery.region: required for transport smtp"])
        up = self.config.smtp
        context = await asyncio.to_thread(tls_context, up.ca_file)
        self._login = await asyncio.to_thread(configured_login, up)
        if self._login is None and up.tls != "none":
            self._session = await aws.session(self.config)
        self._arn_headers = arn_headers(self.config)
        self._endpoint = Endpoint(self.host, up.port, up.tls, context, self.config.timeout,
                                  smtpsession.ehlo_name())
        await self._account.start()

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        assert self._endpoint is not None, "start() first"
        sender = _checked_address(envelope.mail_from, sender=True)
        rcpts, refused = _checked_recipients(envelope.rcpt_tos)
        if not rcpts:
            raise nobody_accepted(refused)
        message = self._ses_headers(envelope) + data
        plain = self.config.smtp.tls == "none"  # a loopback smarthost (benchmarks)
        username, password = ("", "") if plain and self._login is None \
            else await self._credentials()
        client = smtpsession.client(self._endpoint)
        try:
            await smtpsession.open_session(client, self._endpoint)
            if username:
                await smtpsession.authenticate(client, username, password)
            refused.update(await self._envelope(client, sender, rcpts, message))
            if all(rcpt in refused for rcpt, _ in rcpts):
                raise nobody_accepted(refused)
            reply = await client.data(message, timeout=self._data_timeout(len(message)))
        except Exception as e:
            client.close()
            raise classify(e, self.config.region) from e
        except BaseException:  # cancelled: leave no socket behind
            client.close()
            raise
        await smtpsession.quit_session(client, min(self.config.timeout, _QUIT_TIMEOUT))
        return SendResult(_message_id(reply.message), refused)

    async def quota(self) -> Quota | None:
        """The account's quota over the SES API, when IAM credentials allow; else None
        (the limiter keeps delivery.max_send_rate)."""
        return await self._account.quota()

    async def probe(self) -> None:
        """Readiness: connect, TLS as configured, EHLO, QUIT (no AUTH); DeliveryError if not."""
        assert self._endpoint is not None, "start() first"
        await smtpsession.probe(self._endpoint, min(self.config.timeout, _PROBE_TIMEOUT),
                                self.config.region)

    async def aclose(self) -> None:
        self._session = None
        await self._account.aclose()

    # -- one session

    async def _envelope(self, client: aiosmtplib.SMTP, sender: bytes,
                        rcpts: list[tuple[str, bytes]],
                        message: bytes) -> dict[str, DeliveryError]:
        """MAIL, then RCPT one by one; return the recipients SES refused.

        Commands are written with execute_command, not mail()/rcpt(): those re-parse the
        address with email.utils, which may rewrite it (quotes, comments).
        """
        reply = await client.execute_command(b"MAIL", b"FROM:<" + sender + b">",
                                             *_mail_options(client, message))
        if reply.code != 250:
            raise reply_error(reply.code, reply.message, self.config.region)
        refused: dict[str, DeliveryError] = {}
        for rcpt, raw in rcpts:
            reply = await client.execute_command(b"RCPT", b"TO:<" + raw + b">")
            if reply.code == 421:  # the server is closing: no later RCPT can work
                raise reply_error(reply.code, reply.message, self.config.region)
            if reply.code not in (250, 251):
                refused[rcpt] = reply_error(reply.code, reply.message, self.config.region)
        return refused

    def _data_timeout(self, size: int) -> float:
        return self.config.timeout + size / _MIN_UPLOAD_RATE

    def _ses_headers(self, envelope: Envelope) -> bytes:
        headers = b""
        if envelope.configuration_set:
            headers += _header("X-SES-CONFIGURATION-SET", _ses_word(envelope.configuration_set))
        if envelope.tags:
            headers += _header("X-SES-MESSAGE-TAGS", ", ".join(
                f"{_ses_word(name)}={_ses_word(value)}" for name, value in envelope.tags))
        return headers + self._arn_headers

    async def _credentials(self) -> tuple[str, str]:
        if self._login is not None:
            return self._login
        try:
            # Asked per message: refreshable credentials (an assumed role) may have rotated.
            creds = await self._session.get_credentials()
            frozen = await creds.get_frozen_credentials() if creds is not None else None
        except DeliveryError:
            raise
        except Exception as e:  # botocore's, mapped where botocore is known
            raise classify_aws(e, region=self.config.region) from e
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise DeliveryError("no AWS credentials to derive the SES SMTP credentials from",
                                permanent=False, code="NoCredentials",
                                hint="set delivery.smtp.username and password, or give the "
                                     "relay an IAM user's keys (environment, profile)")
        assert self.config.region is not None  # checked in start()
        return frozen.access_key, sescreds.smtp_password(frozen.secret_key, self.config.region)


# -- set-up


def configured_login(up: SmtpUpstream) -> tuple[str, str] | None:
    """The configured user name and password, or None to derive them from IAM."""
    if up.username is None and up.password is None and up.password_file is None:
        return None
    if not up.username:
        raise ConfigError(["delivery.smtp.username: required with a password"])
    password = up.password
    if up.password_file is not None:
        try:
            lines = up.password_file.read_text().splitlines()
        except (OSError, UnicodeError) as e:
            raise ConfigError([f"delivery.smtp.password_file: cannot read "
                               f"{up.password_file}: {e}"]) from e
        password = lines[0].strip() if lines else ""
    if not password:
        raise ConfigError(["delivery.smtp.password: required with a username (or "
                           "password_file, whose first line is the password)"])
    return up.username, password


def arn_headers(config: DeliveryConfig) -> bytes:
    """Sending authorisation, as the SMTP interface takes it (SendRawEmail's three ARNs)."""
    headers = []
    for name, key, value in (("X-SES-SOURCE-ARN", "source_arn", config.source_arn),
                             ("X-SES-FROM-ARN", "from_arn", config.from_arn),
                             ("X-SES-RETURN-PATH-ARN", "return_path_arn",
                              config.return_path_arn)):
        if value:
            if not PRINTABLE.fullmatch(value):
                raise ConfigError([f"delivery.{key}: must be printable ASCII without spaces"])
            headers.append(_header(name, value))
    return b"".join(headers)


# -- one message


def _checked_address(address: str, *, sender: bool = False) -> bytes:
    """The address as it goes on the command line, or a permanent BadAddress error."""
    bad = (not address.isascii()
           or any(c.isspace() or c in "<>" or ord(c) < 0x20 or ord(c) == 0x7F for c in address)
           or (not address and not sender))
    if bad:
        who = "sender" if sender else "recipient"
        raise DeliveryError(f"{who} address {address!r} cannot be sent over SMTP",
                            permanent=True, code="BadAddress",
                            hint="the address contains a control character, a space, '<', "
                                 "'>' or non-ASCII text; it was not sent upstream")
    return address.encode("ascii")


def _checked_recipients(
        rcpt_tos: tuple[str, ...]) -> tuple[list[tuple[str, bytes]], dict[str, DeliveryError]]:
    good: list[tuple[str, bytes]] = []
    refused: dict[str, DeliveryError] = {}
    for rcpt in rcpt_tos:
        try:
            good.append((rcpt, _checked_address(rcpt)))
        except DeliveryError as e:
            refused[rcpt] = e
    return good, refused


def _mail_options(client: aiosmtplib.SMTP, message: bytes) -> list[bytes]:
    options = []
    if client.supports_extension("size"):
        options.append(b"SIZE=%d" % len(message))  # an oversized message is refused now
    if client.supports_extension("8bitmime") and not message.isascii():
        options.append(b"BODY=8BITMIME")  # RFC 6152: 8-bit data must be declared
    return options


def _header(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("ascii")


def _ses_word(value: str) -> str:
    """A configuration set name, tag name or tag value, safe in an X-SES-* header."""
    if not (valid_configuration_set(value) or valid_tag(value)):
        raise DeliveryError(f"{value!r} cannot be sent as an SES configuration set or tag",
                            permanent=True, code="InvalidParameterValue",
                            hint="configuration set names and tags use letters, digits, _ "
                                 "and - only")
    return value


def _message_id(reply_text: str) -> str:
    """SES answers DATA with "250 Ok <message-id>": the id is the last word."""
    words = reply_text.split()
    return words[-1] if words else ""
