"""Delivery to the SES SMTP endpoint (``email-smtp.<region>.amazonaws.com``) with aiosmtplib.

For networks where only SMTP egress is allowed, or where the operator holds SES SMTP
credentials rather than API access. Each message gets its own connection: connect, EHLO,
STARTTLS, EHLO, AUTH, MAIL, one RCPT per recipient, DATA, QUIT. That costs a TCP and TLS
handshake per message, but no pooled connection can go stale under a worker, and every
attempt starts from a known state; correctness first.

TLS is never optional: on a ``starttls`` upstream a server that does not offer STARTTLS
gets nothing, since credentials and mail would otherwise cross the network in clear (a
middlebox stripping STARTTLS looks exactly like that). The certificate is checked against
the system trust store plus ``delivery.smtp.ca_file``, with the host name.

Envelope addresses are checked here before anything is written: aiosmtplib puts them on the
command line as given, so a CR, LF or ``>`` in an address could smuggle commands upstream.
SES answers per recipient, so RCPT replies are honoured one by one (``SendResult.refused``).

The SES options the API transports pass as parameters (configuration set, tags, sending
authorisation ARNs) travel as ``X-SES-*`` headers on the SMTP interface; they are prepended
only when set, so otherwise the message goes out byte for byte. Every aiosmtplib, ssl and
socket error becomes a DeliveryError in ``_classify``.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import aiosmtplib

from relay import aws, sescreds
from relay.config import DeliveryConfig, SmtpUpstream
from relay.errors import ConfigError, DeliveryError
from relay.message import valid_configuration_set, valid_tag
from relay.spool import Envelope
from relay.transports.base import Quota, SendResult
from relay.transports.errors import classify as classify_aws

# SES SMTP takes 40 MB after base64, which inflates by 4/3.
MAX_RAW_SIZE = 30_000_000
# DATA's final reply can only come once the whole message has been written, so its timeout
# grows with the size: a 30 MB message on a slow uplink is not a dead server.
_MIN_UPLOAD_RATE = 100_000  # bytes per second
# QUIT after a 250 to DATA is a courtesy: the message is SES's already.
_QUIT_TIMEOUT = 5.0
# What may appear in a header value we add (an ARN) or in EHLO: printable ASCII, no spaces.
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+")
# Configuration set names and tags, as SES defines them (relay.message checks the same).


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
        self._tls: ssl.SSLContext | None = None
        # Configured SMTP credentials, or None to derive them from the IAM credentials.
        self._login: tuple[str, str] | None = None
        self._session: Any = None
        self._ehlo_name = "localhost"
        self._arn_headers = b""

    async def start(self) -> None:
        if not self.config.region:
            raise ConfigError(["delivery.region: required for transport smtp"])
        self._tls = await asyncio.to_thread(tls_context, self.config.smtp.ca_file)
        self._login = await asyncio.to_thread(configured_login, self.config.smtp)
        if self._login is None and self.config.smtp.tls != "none":
            self._session = await aws.session(self.config)
        self._ehlo_name = _ehlo_name()
        self._arn_headers = arn_headers(self.config)

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        assert self._tls is not None, "start() first"
        sender = _checked_address(envelope.mail_from, sender=True)
        rcpts, refused = _checked_recipients(envelope.rcpt_tos)
        if not rcpts:
            raise _nobody_accepted(refused)
        message = self._ses_headers(envelope) + data
        plain = self.config.smtp.tls == "none"  # a loopback smarthost (benchmarks)
        username, password = ("", "") if plain and self._login is None \
            else await self._credentials()
        client = self._client()
        try:
            await self._open(client, username, password)
            refused.update(await self._envelope(client, sender, rcpts, message))
            if all(rcpt in refused for rcpt, _ in rcpts):
                raise _nobody_accepted(refused)
            reply = await client.data(message, timeout=self._data_timeout(len(message)))
        except Exception as e:
            client.close()
            raise _classify(e, self.config.region) from e
        except BaseException:  # cancelled: leave no socket behind
            client.close()
            raise
        await _quit(client, min(self.config.timeout, _QUIT_TIMEOUT))
        return SendResult(_message_id(reply.message), refused)

    async def quota(self) -> Quota | None:
        return None  # the SMTP interface has no quota call; the limiter uses its own rate

    async def aclose(self) -> None:
        self._session = None

    # -- one session

    def _client(self) -> aiosmtplib.SMTP:
        implicit = self.config.smtp.tls == "implicit"
        # start_tls=False: STARTTLS is done (and required) by _open, never opportunistic.
        return _Client(hostname=self.host, port=self.config.smtp.port, use_tls=implicit,
                       start_tls=False, tls_context=self._tls, timeout=self.config.timeout,
                       local_hostname=self._ehlo_name)

    async def _open(self, client: aiosmtplib.SMTP, username: str, password: str) -> None:
        await client.connect()
        await client.ehlo()
        if self.config.smtp.tls == "starttls":
            if not client.supports_extension("starttls"):
                raise DeliveryError(
                    f"{self.host}:{self.config.smtp.port} does not offer STARTTLS",
                    permanent=False, code="TLSError",
                    hint="the upstream offered no STARTTLS, so nothing was sent in clear: "
                         "check delivery.smtp.host/port (SES: 587 or 25 with starttls, 465 "
                         "with implicit) and that no middlebox strips STARTTLS")
            await client.starttls()
            await client.ehlo()  # RFC 3207: what the server said before TLS is forgotten
        if username:
            await _authenticate(client, username, password)

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
            raise _reply_error(reply.code, reply.message, self.config.region)
        refused: dict[str, DeliveryError] = {}
        for rcpt, raw in rcpts:
            reply = await client.execute_command(b"RCPT", b"TO:<" + raw + b">")
            if reply.code == 421:  # the server is closing: no later RCPT can work
                raise _reply_error(reply.code, reply.message, self.config.region)
            if reply.code not in (250, 251):
                refused[rcpt] = _reply_error(reply.code, reply.message, self.config.region)
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


class _Client(aiosmtplib.SMTP):
    """aiosmtplib's client, but closing drops the connection at once.

    aiosmtplib's close() starts a TLS shutdown that waits for the server's close_notify
    (up to 30 s) before the socket is closed. After QUIT, or after a failure, nothing more
    is to be said, so the socket goes now, as smtplib does.
    """

    def close(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()
        super().close()


# -- set-up


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
            if not _HEADER_VALUE.fullmatch(value):
                raise ConfigError([f"delivery.{key}: must be printable ASCII without spaces"])
            headers.append(_header(name, value))
    return b"".join(headers)


def _ehlo_name() -> str:
    # gethostname() needs no DNS, unlike aiosmtplib's default getfqdn(), which can block
    # for seconds; SES does not check the EHLO name.
    name = socket.gethostname()
    return name if name.isascii() and _HEADER_VALUE.fullmatch(name) else "localhost"


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


async def _authenticate(client: aiosmtplib.SMTP, username: str, password: str) -> None:
    # SES offers PLAIN and LOGIN. One method, one attempt: aiosmtplib's login() would try
    # every method in turn and double the failed attempts a wrong password costs.
    methods = client.server_auth_methods
    if "plain" in methods:
        await client.auth_plain(username, password)
    elif "login" in methods:
        await client.auth_login(username, password)
    else:
        raise DeliveryError(f"the upstream offers no AUTH PLAIN or LOGIN ({methods})",
                            permanent=False, code="AuthenticationFailed",
                            hint="is delivery.smtp.host an SES SMTP endpoint?")


async def _quit(client: aiosmtplib.SMTP, wait: float) -> None:
    try:
        await client.quit(timeout=wait)
    except Exception:  # noqa: S110  # the message is delivered; a lost goodbye is not an error
        pass
    finally:
        client.close()


def _message_id(reply_text: str) -> str:
    """SES answers DATA with "250 Ok <message-id>": the id is the last word."""
    words = reply_text.split()
    return words[-1] if words else ""


def _nobody_accepted(refused: dict[str, DeliveryError]) -> DeliveryError:
    """Permanent only if every recipient was refused for good; else retry (keeping throttle)."""
    errors = list(refused.values())
    first = next((e for e in errors if not e.permanent), errors[0])
    prefix = "" if len(errors) == 1 else f"all {len(errors)} recipients refused; "
    return DeliveryError(f"{prefix}{first}", permanent=first.permanent, code=first.code,
                         hint=first.hint, throttle=first.throttle)


# -- the one place where SMTP, TLS and socket errors become DeliveryErrors


def _classify(exc: Exception, region: str | None) -> DeliveryError:
    if isinstance(exc, DeliveryError):
        return exc
    tls = _tls_error(exc)
    if tls is not None:
        return DeliveryError(f"TLS with the SES SMTP endpoint failed: {tls}", permanent=False,
                             code="TLSError",
                             hint="the TLS handshake failed, most often over the certificate: "
                                  "check that delivery.smtp.host is the name in it, that "
                                  "delivery.smtp.ca_file holds the CA of a private endpoint, "
                                  "and that delivery.smtp.tls suits the port (465: implicit)")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and exc.code >= 500:
        return _auth_failed(exc.code, exc.message, region)
    if isinstance(exc, aiosmtplib.SMTPDataError | aiosmtplib.SMTPAuthenticationError):
        return _reply_error(exc.code, exc.message, region)  # 4xx to AUTH: throttled, say
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # A refusal before the mail transaction (greeting, EHLO, STARTTLS) is about the
        # session, never about this message.
        return DeliveryError(f"{exc.code} {exc.message}", permanent=False,
                             code=f"SMTP{exc.code}",
                             hint="the SES SMTP endpoint refused the session; retrying")
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts included
        return DeliveryError(str(exc) or "timed out", permanent=False, code="Timeout",
                             hint="the SES SMTP endpoint did not answer in time: check "
                                  "delivery.smtp.host/port and that a firewall does not "
                                  "drop the connection (or raise delivery.timeout)")
    if isinstance(exc, OSError):  # aiosmtplib's disconnects and connect errors included
        return DeliveryError(str(exc) or type(exc).__name__, permanent=False,
                             code="ConnectionError",
                             hint="cannot reach the SES SMTP endpoint: check network, DNS, "
                                  "delivery.smtp.host/port and the firewall (outbound 587, "
                                  "465 or 25)")
    return DeliveryError(f"{type(exc).__name__}: {exc}", permanent=False, code="Unknown",
                         hint="unexpected error talking to the SES SMTP endpoint; retrying")


def _tls_error(exc: BaseException) -> ssl.SSLError | ssl.CertificateError | None:
    """The TLS failure behind *exc*: aiosmtplib wraps a failed handshake on connect."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain is short; a cycle must not hang us
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _auth_failed(code: int, text: str, region: str | None) -> DeliveryError:
    return DeliveryError(
        f"{code} {text}", permanent=False, code="AuthenticationFailed",
        hint=f"SES refused the SMTP credentials. They are specific to a region (here "
             f"{region}) and are not the IAM secret key itself but derived from it: check "
             f"delivery.smtp.username/password were made for {region}, or, when derived "
             f"from the credential chain, that they are an IAM user's long-term keys (SES "
             f"SMTP takes no temporary role credentials) allowed ses:SendRawEmail")


def _reply_error(code: int, text: str, region: str | None) -> DeliveryError:
    """A reply to MAIL, RCPT or DATA: 4xx transient, 5xx permanent unless about the account."""
    message = f"{code} {text}"
    low = text.lower()
    if code == 535:
        return _auth_failed(code, text, region)
    if 400 <= code < 500 and "throttl" in low:
        if "daily" in low or "quota" in low:
            return DeliveryError(message, permanent=False, code="DailyQuotaExceeded",
                                 throttle="daily",
                                 hint="the account's 24-hour sending quota is used up; mail "
                                      "stays queued until SES's window frees up (ask AWS "
                                      "for a higher quota)")
        return DeliveryError(message, permanent=False, code="Throttling", throttle="rate",
                             hint="SES throttled the connection: sending faster than the "
                                  "account's maximum send rate")
    if 400 <= code < 500:
        return DeliveryError(message, permanent=False, code=f"SMTP{code}",
                             hint="the SES SMTP endpoint deferred the message; retrying")
    if code < 500:
        return DeliveryError(message, permanent=False, code=f"SMTP{code}",
                             hint="unexpected reply from the SES SMTP endpoint; retrying")
    return _permanent_reply(code, text, region)


def _permanent_reply(code: int, text: str, region: str | None) -> DeliveryError:
    message = f"{code} {text}"
    low = text.lower()
    # The account and its permissions are not this message's fault: wait for a fix.
    if "access denied" in low or "not authorized" in low:
        return DeliveryError(message, permanent=False, code="AccessDenied",
                             hint="the IAM identity behind the SMTP credentials lacks "
                                  "ses:SendRawEmail")
    if "paused" in low or "suspended" in low:
        return DeliveryError(message, permanent=False, code="SendingPaused",
                             hint=f"sending is paused for the account or configuration set "
                                  f"in region {region}")
    if "configuration set" in low and "not exist" in low:
        return DeliveryError(message, permanent=False, code="ConfigurationSetDoesNotExist",
                             hint=f"the configuration set does not exist in region {region}")
    if "not verified" in low:
        return DeliveryError(message, permanent=True, code="MessageRejected",
                             hint=f"SES rejected the message: in the sandbox every recipient "
                                  f"must be a verified identity, and the sender must be "
                                  f"verified in region {region}")
    if code == 552 or "too large" in low:
        return DeliveryError(message, permanent=True, code="MessageTooLarge",
                             hint="the message is larger than SES accepts (40 MB after "
                                  "base64 encoding)")
    if "duplicate header" in low:
        return DeliveryError(message, permanent=True, code="DuplicateHeader",
                             hint="the message repeats a header field that may appear only "
                                  "once (Subject, From, To, Date...)")
    return DeliveryError(message, permanent=True, code=f"SMTP{code}",
                         hint="the SES SMTP endpoint refused the message")
