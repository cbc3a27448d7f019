"""The smtp transport knows the account, and /readyz probes what each transport sends to.

The relay runs in-process with the smtp transport pointed at a scripted SES SMTP endpoint
(tests/fakesmtp.py) and its SES API endpoint at moto_server (GetSendQuota), the fake SES
(GetAccount) or a stand-in that refuses both, as an SMTP user's IAM policy does. What a
user sees is checked: the rate the limiter uses (the ses_relay_send_rate_limit gauge and
the log), /readyz's status and body, and the mail reaching the SMTP endpoint.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from clients import implicit
from conftest import PASSWORD as RELAY_PASSWORD
from conftest import SENDER, Certs, Moto, Setup, events, wait_until
from conftest import USER as RELAY_USER
from fakeses import FakeSES
from fakesmtp import PASSWORD, USER, FakeSESSMTP, start_fake
from test_metrics import get

MESSAGE = (b"From: sender@example.com\r\nTo: to@example.net\r\nSubject: s\r\n"
           b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <a@example.com>\r\n\r\n"
           b"body\r\n")


def gauge(port: int, name: str) -> float:
    for line in get(port, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


@pytest.fixture
def smtp_endpoint(certs: Certs) -> Iterator[Callable[..., FakeSESSMTP]]:
    stops: list[Callable[[], None]] = []

    def start(tls: str = "starttls") -> FakeSESSMTP:
        fake = FakeSESSMTP(tls)
        stops.append(start_fake(fake, certs.cert, certs.key).stop)
        return fake

    yield start
    for stop in stops:
        stop()


def smtp_relay(make_setup: Callable[..., Setup], certs: Certs, port: int,
               tls: str = "starttls", **delivery: Any) -> Setup:
    """A relay on the smtp transport to 127.0.0.1:*port*, with a metrics listener."""
    setup = make_setup("smtp", region="us-east-1", smtp={
        "host": "localhost", "port": port, "tls": tls, "username": USER,
        "password": PASSWORD, "ca_file": str(certs.ca)}, **delivery)
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    return setup


def send_one(setup: Setup, fake: FakeSESSMTP) -> None:
    with implicit(setup.implicit_port, setup.certs.ca, RELAY_USER, RELAY_PASSWORD) as s:
        s.sendmail(SENDER, ["to@example.net"], MESSAGE)
    wait_until(lambda: fake.messages)
    assert fake.messages[0].rcpt_tos == ["to@example.net"]


class RefusingSES:
    """An SES API endpoint that answers both quota calls as SES does for an SMTP user's
    IAM policy (ses:SendRawEmail only): GetAccount (v2, JSON) and GetSendQuota (v1, XML)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming; SESv2 GetAccount
                outer.calls.append("GetAccount")
                self._reply(b'{"message": "User is not authorized to perform: '
                            b'ses:GetAccount"}', "application/json",
                            {"x-amzn-ErrorType": "AccessDeniedException"})

            def do_POST(self) -> None:  # SESv1 query protocol: Action=GetSendQuota
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.calls.append("GetSendQuota")
                self._reply(b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied"
                            b"</Code><Message>User is not authorized to perform "
                            b"ses:GetSendQuota</Message></Error><RequestId>1</RequestId>"
                            b"</ErrorResponse>", "text/xml", {})

            def _reply(self, body: bytes, kind: str, headers: dict[str, str]) -> None:
                self.send_response(403)
                for name, value in {"Content-Type": kind, **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RefusingSES:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the account's limits


def test_follows_max_send_rate_and_the_daily_quota_from_get_send_quota(
        make_setup, start_relay, certs: Certs, moto: Moto,
        smtp_endpoint: Callable[..., FakeSESSMTP], logs: list[dict[str, Any]]) -> None:
    # moto serves SESv1 GetSendQuota (MaxSendRate 1, Max24HourSend 200) but not SESv2
    # GetAccount (404): the transport falls back to the call that answers.
    fake = smtp_endpoint()
    setup = smtp_relay(make_setup, certs, fake.port, endpoint_url=moto.url)
    start_relay(setup)
    port = setup.port("metrics")
    assert gauge(port, "ses_relay_send_rate_limit") == 1.0
    assert gauge(port, "ses_relay_send_quota_max_24h") == 200.0
    [quota] = events(logs, "quota")
    assert (quota["max_send_rate"], quota["rate_in_force"]) == (1.0, 1.0)
    assert events(logs, "smtp_account_limits_unread") == []
    send_one(setup, fake)


def test_follows_get_account_and_stops_at_the_daily_quota(
        make_setup, start_relay, certs: Certs, smtp_endpoint: Callable[..., FakeSESSMTP],
        logs: list[dict[str, Any]]) -> None:
    fake = smtp_endpoint("implicit")
    with FakeSES() as ses:
        ses.account = {"SendQuota": {"MaxSendRate": 14.0, "Max24HourSend": 50000.0,
                                     "SentLast24Hours": 50000.0}}
        setup = smtp_relay(make_setup, certs, fake.port, tls="implicit",
                           endpoint_url=ses.url)
        start_relay(setup)
        port = setup.port("metrics")
        assert gauge(port, "ses_relay_send_rate_limit") == 14.0
        assert gauge(port, "ses_relay_send_quota_sent_24h") == 50000.0
    [reached] = events(logs, "daily_quota_reached")
    assert reached["max_24_hour_send"] == 50000.0


def test_a_configured_rate_wins_over_the_accounts(
        make_setup, start_relay, certs: Certs, smtp_endpoint: Callable[..., FakeSESSMTP]
        ) -> None:
    fake = smtp_endpoint()
    with FakeSES() as ses:
        ses.account = {"SendQuota": {"MaxSendRate": 14.0, "Max24HourSend": 50000.0,
                                     "SentLast24Hours": 3.0}}
        setup = smtp_relay(make_setup, certs, fake.port, endpoint_url=ses.url,
                           max_send_rate=4)
        start_relay(setup)
        port = setup.port("metrics")
        assert gauge(port, "ses_relay_send_rate_limit") == 4.0
        assert gauge(port, "ses_relay_send_quota_max_24h") == 50000.0


def test_without_aws_credentials_the_configured_rate_alone_is_used_and_said_once(
        make_setup, start_relay, certs: Certs, smtp_endpoint: Callable[..., FakeSESSMTP],
        refused_url: str, logs: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    fake = smtp_endpoint()
    setup = smtp_relay(make_setup, certs, fake.port, endpoint_url=refused_url,
                       max_send_rate=5)
    relay = start_relay(setup)
    assert gauge(setup.port("metrics"), "ses_relay_send_rate_limit") == 5.0
    assert relay.call(relay.relay.transport.quota()) is None  # a later refresh: no new line
    [line] = events(logs, "smtp_account_limits_unread")
    assert line["log_level"] == "info"
    assert line["reason"] == "no AWS credentials in the standard chain"
    assert line["max_send_rate"] == 5.0
    assert events(logs, "quota_unavailable") == []
    send_one(setup, fake)  # SMTP credentials are configured: mail goes out as before


def test_an_iam_policy_without_the_quota_calls_does_not_stop_delivery(
        make_setup, start_relay, certs: Certs, smtp_endpoint: Callable[..., FakeSESSMTP],
        logs: list[dict[str, Any]]) -> None:
    fake = smtp_endpoint()
    with RefusingSES() as ses:
        setup = smtp_relay(make_setup, certs, fake.port, endpoint_url=ses.url)
        relay = start_relay(setup)
        port = setup.port("metrics")
        assert gauge(port, "ses_relay_send_rate_limit") == 0.0  # no limit, as before
        assert relay.call(relay.relay.transport.quota()) is None
        assert ses.calls == ["GetAccount", "GetSendQuota"] * 2
        send_one(setup, fake)
        assert get(port, "/readyz") == (200, "ready\n")
    [line] = events(logs, "smtp_account_limits_unread")
    assert line["reason"] == ("GetAccount: AccessDeniedException; GetSendQuota: "
                              "AccessDenied")
    assert line["log_level"] == "info"
    assert events(logs, "quota_unavailable") == []


def test_an_unreachable_ses_api_does_not_stop_delivery(
        make_setup, start_relay, certs: Certs, smtp_endpoint: Callable[..., FakeSESSMTP],
        refused_url: str, logs: list[dict[str, Any]]) -> None:
    # Where only SMTP egress is open, the API cannot be reached: one line, mail goes out.
    fake = smtp_endpoint()
    setup = smtp_relay(make_setup, certs, fake.port, endpoint_url=refused_url)
    start_relay(setup)
    send_one(setup, fake)
    [line] = events(logs, "smtp_account_limits_unread")
    assert line["reason"] == "GetAccount: ConnectionError"
    assert events(logs, "quota_unavailable") == []


# -- /readyz


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_ready_means_the_smtp_endpoint_answers_tls_and_ehlo(
        make_setup, start_relay, certs: Certs, smtp_endpoint: Callable[..., FakeSESSMTP],
        refused_url: str, tls: str) -> None:
    fake = smtp_endpoint(tls)
    setup = smtp_relay(make_setup, certs, fake.port, tls=tls, endpoint_url=refused_url)
    start_relay(setup)
    port = setup.port("metrics")
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/readyz") == (200, "ready\n")  # cached: asked once
    assert (fake.sessions, fake.quits) == (1, 1)
    assert fake.logins == [] and fake.commands == []  # no AUTH, no mail


def test_not_ready_when_the_smtp_endpoint_cannot_be_reached(
        make_setup, start_relay, certs: Certs, refused_url: str) -> None:
    port_down = int(refused_url.rsplit(":", 1)[1])
    setup = smtp_relay(make_setup, certs, port_down, endpoint_url=refused_url)
    start_relay(setup)
    status, text = get(setup.port("metrics"), "/readyz")
    assert status == 503
    assert text.startswith("upstream: ConnectionError: ")
    assert PASSWORD not in text and USER not in text


def test_not_ready_when_the_smtp_endpoint_never_greets(
        make_setup, start_relay, certs: Certs, refused_url: str) -> None:
    # The probe gives up before the readiness check's own deadline, so the answer says
    # why rather than "check failed".
    with socket.socket() as silent:  # the kernel accepts; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        setup = smtp_relay(make_setup, certs, silent.getsockname()[1],
                           endpoint_url=refused_url)
        start_relay(setup)
        status, text = get(setup.port("metrics"), "/readyz")
    assert status == 503
    assert text.startswith("upstream: Timeout: ")


def test_not_ready_when_a_starttls_endpoint_offers_no_starttls(
        make_setup, start_relay, certs: Certs, smtp_endpoint: Callable[..., FakeSESSMTP],
        refused_url: str) -> None:
    fake = smtp_endpoint("none")
    setup = smtp_relay(make_setup, certs, fake.port, endpoint_url=refused_url)
    start_relay(setup)
    status, text = get(setup.port("metrics"), "/readyz")
    assert status == 503
    assert text.startswith("upstream: TLSError: ") and "STARTTLS" in text
    assert PASSWORD not in text
    assert fake.logins == []


def test_ready_on_the_outbox_leaves_nothing_in_it(setup: Setup, start_relay) -> None:
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    start_relay(setup)
    assert get(setup.port("metrics"), "/readyz") == (200, "ready\n")
    assert os.listdir(setup.outbox_dir) == []


def test_not_ready_when_the_outbox_is_gone(setup: Setup, start_relay) -> None:
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    start_relay(setup)
    os.rmdir(setup.outbox_dir)
    setup.outbox_dir.write_text("a file where the folder was")
    status, text = get(setup.port("metrics"), "/readyz")
    assert status == 503
    assert text.startswith("upstream: OutboxNotWritable: ")
    assert str(setup.outbox_dir) in text
