"""The smtp transport against a scripted SES SMTP endpoint (tests/fakesmtp.py): aiosmtpd on
127.0.0.1, real TLS.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from conftest import Certs
from fakesmtp import PASSWORD, USER, FakeSESSMTP, start_fake

from relay.config import DeliveryConfig, SmtpUpstream
from relay.errors import ConfigError, DeliveryError
from relay.spool import Envelope
from relay.transports.base import SendResult
from relay.transports.smtp import SMTPTransport

SENDER = "sender@example.com"
# A dot-led line (dot-stuffing both ways) and 8-bit text (BODY=8BITMIME) in the body.
MESSAGE = (b"From: sender@example.com\r\nTo: to@example.net\r\nSubject: via SES SMTP\r\n"
           b"Message-ID: <1@example.com>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n"
           b"Hello SES.\r\n.a line that starts with a dot\r\n..two dots\r\n"
           b"Gr\xc3\xbc\xc3\x9fe\r\n")


@pytest.fixture
def fake_ses(certs: Certs) -> Iterator[Callable[..., FakeSESSMTP]]:
    controllers: list[Controller] = []

    def start(tls: str = "starttls", cert: Path | None = None, key: Path | None = None,
              **kw: Any) -> FakeSESSMTP:
        fake = FakeSESSMTP(tls, **kw)
        controllers.append(start_fake(fake, cert or certs.cert, key or certs.key))
        return fake

    yield start
    for controller in controllers:
        controller.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def config(certs: Certs, port: int, tls: str = "starttls", timeout: float = 5,
           delivery: dict[str, Any] | None = None, **smtp: Any) -> DeliveryConfig:
    upstream: dict[str, Any] = {"host": "localhost", "port": port, "tls": tls,
                                "username": USER, "password": PASSWORD, "ca_file": certs.ca,
                                **smtp}
    return DeliveryConfig(transport="smtp", region="us-east-1", timeout=timeout,
                          smtp=SmtpUpstream(**upstream), **(delivery or {}))


def send(cfg: DeliveryConfig, envelope: Envelope, data: bytes = MESSAGE) -> SendResult:
    async def run() -> SendResult:
        transport = SMTPTransport(cfg)
        await transport.start()
        try:
            return await asyncio.wait_for(transport.send(envelope, data), 30)
        finally:
            await transport.aclose()

    return asyncio.run(run())


def send_error(cfg: DeliveryConfig, envelope: Envelope, data: bytes = MESSAGE) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        send(cfg, envelope, data)
    return info.value


def to(*rcpts: str) -> Envelope:
    return Envelope(SENDER, rcpts or ("to@example.net",))


# -- delivery


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_delivers_the_exact_bytes_and_returns_the_ses_message_id(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP], tls: str) -> None:
    fake = fake_ses(tls)
    result = send(config(certs, fake.port, tls), to("to@example.net", "bcc@example.org"))
    [received] = fake.messages
    assert received.data == MESSAGE
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["to@example.net", "bcc@example.org"]
    assert "BODY=8BITMIME" in received.mail_options
    assert result.message_id == fake.message_ids[0]
    assert result.refused == {}
    assert fake.logins == [(USER, PASSWORD)]
    assert fake.sessions == 1


def test_the_password_file_first_line_is_the_password(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP], tmp_path: Path) -> None:
    fake = fake_ses()
    secret = tmp_path / "smtp-password"
    secret.write_text(f"{PASSWORD}\nnot part of it\n")
    send(config(certs, fake.port, password=None, password_file=secret), to())
    assert fake.logins == [(USER, PASSWORD)]
    assert len(fake.messages) == 1


def test_derives_smtp_credentials_from_the_iam_keys_when_none_are_configured(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    fake = fake_ses(username="AKIAIOSFODNN7EXAMPLE",
                    password="BLBM/9hSUELfq8Gw+rU1YcBjkOxGbhT2XG763xVLGWL9")
    send(config(certs, fake.port, username=None, password=None), to())
    assert fake.logins == [("AKIAIOSFODNN7EXAMPLE",
                            "BLBM/9hSUELfq8Gw+rU1YcBjkOxGbhT2XG763xVLGWL9")]
    assert len(fake.messages) == 1


def test_ses_options_travel_as_x_ses_headers_on_top_of_the_message(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP]) -> None:
    fake = fake_ses()
    arn = "arn:aws:ses:us-east-1:123456789012:identity/example.com"
    envelope = Envelope(SENDER, ("to@example.net",), configuration_set="marketing",
                        tags=(("campaign", "spring"), ("team", "growth")))
    send(config(certs, fake.port, delivery={"from_arn": arn, "return_path_arn": arn}),
         envelope)
    [received] = fake.messages
    assert received.data == (b"X-SES-CONFIGURATION-SET: marketing\r\n"
                             b"X-SES-MESSAGE-TAGS: campaign=spring, team=growth\r\n"
                             b"X-SES-FROM-ARN: " + arn.encode() + b"\r\n"
                             b"X-SES-RETURN-PATH-ARN: " + arn.encode() + b"\r\n" + MESSAGE)


def test_without_configured_or_iam_credentials_the_send_waits_for_them(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    fake = fake_ses()
    error = send_error(config(certs, fake.port, username=None, password=None), to())
    assert (error.code, error.permanent) == ("NoCredentials", False)
    assert fake.sessions == 0


# -- TLS


def test_refuses_to_send_when_a_starttls_upstream_does_not_offer_starttls(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP]) -> None:
    fake = fake_ses("none")
    error = send_error(config(certs, fake.port, "starttls"), to())
    assert (error.code, error.permanent) == ("TLSError", False)
    assert "STARTTLS" in str(error)
    assert fake.sessions == 1
    assert fake.logins == [] and fake.commands == []  # neither credentials nor mail in clear


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_an_untrusted_certificate_is_a_transient_tls_error(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP], tmp_path: Path, tls: str) -> None:
    stranger = trustme.CA().issue_cert("localhost", "127.0.0.1", "::1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    stranger.cert_chain_pems[0].write_to_path(str(cert))
    stranger.private_key_pem.write_to_path(str(key))
    fake = fake_ses(tls, cert=cert, key=key)
    error = send_error(config(certs, fake.port, tls), to())
    assert (error.code, error.permanent) == ("TLSError", False)
    assert "ca_file" in error.hint
    assert fake.logins == [] and fake.commands == []


def test_a_certificate_for_another_host_name_is_refused(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP], tmp_path: Path) -> None:
    ca = trustme.CA()
    other = ca.issue_cert("other.example")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    other.cert_chain_pems[0].write_to_path(str(cert))
    other.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    fake = fake_ses("implicit", cert=cert, key=key)
    error = send_error(config(certs, fake.port, "implicit", ca_file=ca_file), to())
    assert (error.code, error.permanent) == ("TLSError", False)
    assert fake.logins == []


# -- per-recipient replies


def test_refused_recipients_are_reported_one_by_one_while_the_others_get_the_message(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP]) -> None:
    fake = fake_ses()
    fake.rcpt_replies = {"gone@example.net": "550 5.1.1 Mailbox unavailable",
                         "later@example.net": "450 4.2.0 Try again later"}
    result = send(config(certs, fake.port),
                  to("to@example.net", "gone@example.net", "later@example.net"))
    assert [m.rcpt_tos for m in fake.messages] == [["to@example.net"]]
    assert result.message_id == fake.message_ids[0]
    assert set(result.refused) == {"gone@example.net", "later@example.net"}
    gone, later = result.refused["gone@example.net"], result.refused["later@example.net"]
    assert (gone.permanent, gone.code) == (True, "SMTP550")
    assert (later.permanent, later.code) == (False, "SMTP450")
    assert "Mailbox unavailable" in str(gone)


@pytest.mark.parametrize(("replies", "permanent"), [
    (["550 5.1.1 Mailbox unavailable", "553 5.1.3 Bad address"], True),
    (["550 5.1.1 Mailbox unavailable", "450 4.2.0 Try again later"], False),
])
def test_when_every_recipient_is_refused_the_send_fails(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP], replies: list[str],
        permanent: bool) -> None:
    fake = fake_ses()
    fake.rcpt_replies = {"a@example.net": replies[0], "b@example.net": replies[1]}
    error = send_error(config(certs, fake.port), to("a@example.net", "b@example.net"))
    assert error.permanent is permanent
    assert "DATA" not in fake.commands and fake.messages == []


# -- SES's answers


@pytest.mark.parametrize(("reply", "throttle", "code"), [
    ("454 Throttling failure: Maximum sending rate exceeded", "rate", "Throttling"),
    ("454 Throttling failure: Daily message quota exceeded", "daily", "DailyQuotaExceeded"),
])
def test_ses_throttling_is_transient_and_says_whether_rate_or_daily_quota(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP], reply: str, throttle: str,
        code: str) -> None:
    fake = fake_ses()
    fake.data_reply = reply
    error = send_error(config(certs, fake.port), to())
    assert (error.permanent, error.throttle, error.code) == (False, throttle, code)
    assert "454" in str(error)


def test_throttling_at_mail_from_is_transient_too(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP]) -> None:
    fake = fake_ses()
    fake.mail_reply = "454 Throttling failure: Maximum sending rate exceeded"
    error = send_error(config(certs, fake.port), to())
    assert (error.permanent, error.throttle) == (False, "rate")
    assert fake.commands == ["MAIL sender@example.com"]


def test_wrong_smtp_credentials_are_a_transient_authentication_failure(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP]) -> None:
    fake = fake_ses(password="the-right-one")
    error = send_error(config(certs, fake.port), to())
    assert (error.code, error.permanent) == ("AuthenticationFailed", False)
    assert "535" in str(error)
    assert "region" in error.hint and "us-east-1" in error.hint
    assert len(fake.logins) == 1  # one attempt, not one per AUTH method
    assert fake.commands == []


def test_an_unverified_identity_is_a_permanent_rejection_naming_the_region(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP]) -> None:
    fake = fake_ses()
    fake.data_reply = ("554 Message rejected: Email address is not verified. The following "
                       "identities failed the check in region US-EAST-1: sender@example.com")
    error = send_error(config(certs, fake.port), to())
    assert (error.code, error.permanent) == ("MessageRejected", True)
    assert "us-east-1" in error.hint and "verified" in error.hint
    assert "not verified" in str(error)


@pytest.mark.parametrize(("reply", "code", "permanent"), [
    ("552 5.3.4 Message size exceeds fixed maximum message size", "MessageTooLarge", True),
    ("554 Transaction failed: Message too large", "MessageTooLarge", True),
    ("554 Transaction failed: Duplicate header 'Subject'.", "DuplicateHeader", True),
    ("554 5.6.0 Transaction failed: something else", "SMTP554", True),
    ("451 4.3.0 Temporary service failure", "SMTP451", False),
    ("554 Access denied: User is not authorized to perform ses:SendRawEmail",
     "AccessDenied", False),
    ("554 Sending paused for this account.", "SendingPaused", False),
])
def test_other_replies_to_data_keep_their_smtp_meaning(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP], reply: str, code: str,
        permanent: bool) -> None:
    fake = fake_ses()
    fake.data_reply = reply
    error = send_error(config(certs, fake.port), to())
    assert (error.code, error.permanent) == (code, permanent)
    assert error.hint


# -- addresses


def test_a_sender_with_cr_lf_is_refused_before_anything_is_sent(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP]) -> None:
    fake = fake_ses()
    envelope = Envelope("sender@example.com>\r\nRCPT TO:<victim@example.org",
                        ("to@example.net",))
    error = send_error(config(certs, fake.port), envelope)
    assert (error.code, error.permanent) == ("BadAddress", True)
    assert fake.sessions == 0 and fake.commands == [] and fake.logins == []


def test_a_recipient_with_cr_is_refused_alone_and_never_reaches_the_server(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP]) -> None:
    fake = fake_ses()
    evil = "evil@example.net>\rRCPT TO:<victim@example.org"
    result = send(config(certs, fake.port), to("to@example.net", evil))
    assert fake.commands == ["MAIL sender@example.com", "RCPT to@example.net", "DATA"]
    assert [m.rcpt_tos for m in fake.messages] == [["to@example.net"]]
    assert list(result.refused) == [evil]
    assert (result.refused[evil].code, result.refused[evil].permanent) == ("BadAddress", True)


@pytest.mark.parametrize("address", ["a b@example.net", "a<b@example.net", "a@example.net>",
                                     "nul\x00@example.net", "tab\t@example.net",
                                     "gr\u00fc\u00df@example.net", ""])
def test_recipients_that_cannot_go_on_an_smtp_command_line_are_refused_locally(
        certs: Certs, fake_ses: Callable[..., FakeSESSMTP], address: str) -> None:
    fake = fake_ses()
    error = send_error(config(certs, fake.port), to(address))
    assert (error.code, error.permanent) == ("BadAddress", True)
    assert fake.sessions == 0


# -- the network


def test_nothing_listening_is_a_transient_connection_error(certs: Certs,
                                                          refused_url: str) -> None:
    error = send_error(config(certs, port_of(refused_url)), to())
    assert (error.code, error.permanent) == ("ConnectionError", False)
    assert "host" in error.hint and "firewall" in error.hint


def test_a_server_that_never_greets_is_a_transient_timeout(certs: Certs) -> None:
    with socket.socket() as silent:  # the kernel accepts; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        cfg = DeliveryConfig(transport="smtp", region="us-east-1", timeout=0.5,
                             smtp=SmtpUpstream(host="127.0.0.1", port=port, username=USER,
                                               password=PASSWORD, ca_file=certs.ca))
        error = send_error(cfg, to())
    assert (error.code, error.permanent) == ("Timeout", False)


# -- configuration


def test_a_username_without_a_password_stops_the_start(certs: Certs,
                                                       refused_url: str) -> None:
    cfg = config(certs, port_of(refused_url), password=None)
    with pytest.raises(ConfigError, match=r"delivery\.smtp\.password"):
        asyncio.run(SMTPTransport(cfg).start())


def test_the_transport_states_its_limits(certs: Certs, refused_url: str) -> None:
    # Its quota is the account's, read over the SES API: tests/test_smtp_account.py.
    transport = SMTPTransport(config(certs, port_of(refused_url)))
    assert (transport.name, transport.max_recipients) == ("smtp", 50)
    assert transport.max_message_size == 30_000_000
    assert transport.host == "localhost"
    default = SMTPTransport(DeliveryConfig(transport="smtp", region="eu-west-1"))
    assert default.host == "email-smtp.eu-west-1.amazonaws.com"
    assert default.config.smtp.port == 587
