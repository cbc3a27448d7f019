"""Prometheus metrics and health endpoints, read over HTTP like a scraper would."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import urllib.error
import urllib.request

import pytest
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, wait_until

from relay.metrics import CachedCheck
from relay.web.metricsroutes import MetricsRoutes

MESSAGE = (b"From: sender@example.com\r\nSubject: m\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <m@example.com>\r\n\r\nbody\r\n")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def with_metrics(setup: Setup) -> str:
    """A metrics listener on port 0; its name in ``setup.ports`` once started."""
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    return "metrics"


def test_metrics_count_what_happened(setup: Setup, start_relay) -> None:
    name = with_metrics(setup)
    start_relay(setup)
    port = setup.port(name)
    _, before = get(port, "/metrics")
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["a@example.net", "b@example.net"], MESSAGE)
        assert s.mail(SENDER)[0] == 250 and s.rcpt("not an address")[0] == 553
    with implicit(setup.implicit_port, setup.certs.ca) as s, \
            pytest.raises(smtplib.SMTPAuthenticationError):
        s.login(USER, "wrong-password")

    def delivered() -> bool:
        return value(get(port, "/metrics")[1],
                     'ses_relay_messages_delivered_total{transport="outbox"}') >= 1

    wait_until(delivered)
    status, after = get(port, "/metrics")
    assert status == 200
    for name, delta in [("ses_relay_messages_queued_total", 1),
                        ("ses_relay_messages_received_total", 1),
                        ('ses_relay_recipients_delivered_total{transport="outbox"}', 2),
                        ('ses_relay_rejected_total{code="553",step="RCPT"}', 1),
                        ("ses_relay_accept_seconds_count", 1)]:
        assert value(after, name) - value(before, name) == delta, name
    assert value(after, "ses_relay_auth_failures_total") >= 1
    assert "ses_relay_queue_depth 0.0" in after


def test_the_started_line_says_which_ports_were_bound(setup: Setup, start_relay,
                                                     logs) -> None:
    # Every listener on port 0: what the kernel gave is what an operator (and the tests)
    # read from the log, the HTTP listeners' too.
    setup.doc["feedback"].update({"http": {"address": "127.0.0.1", "port": 0},
                                  "topic_arns": ["arn:aws:sns:us-east-1:123456789012:t"]})
    with_metrics(setup)
    start_relay(setup)
    [started] = [e for e in logs if e["event"] == "started"]
    ports = {**started["listeners"], **started["http"]}
    assert set(ports) == {"submission", "submissions", "metrics", "feedback"}
    assert 0 not in ports.values() and len(set(ports.values())) == 4
    assert get(ports["metrics"], "/healthz") == (200, "ok\n")
    with socket.create_connection(("127.0.0.1", ports["feedback"]), timeout=10):
        pass
    with implicit(ports["submissions"], setup.certs.ca, USER, PASSWORD) as s:
        assert s.noop()[0] == 250


def test_health_and_readiness(setup: Setup, start_relay) -> None:
    name = with_metrics(setup)
    start_relay(setup)
    port = setup.port(name)
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/nothing")[0] == 404


def test_not_ready_when_ses_cannot_be_reached(make_setup, start_relay, refused_url) -> None:
    setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=refused_url)
    name = with_metrics(setup)
    start_relay(setup)
    port = setup.port(name)
    status, text = get(port, "/readyz")
    assert status == 503
    assert "ConnectionError" in text
    assert get(port, "/healthz")[0] == 200  # alive, just not ready


def test_quota_gauges_follow_get_account(make_setup, start_relay) -> None:
    from fakeses import FakeSES

    with FakeSES() as ses:
        ses.account = {"SendQuota": {"MaxSendRate": 14.0, "Max24HourSend": 50000.0,
                                     "SentLast24Hours": 1234.0}}
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        name = with_metrics(setup)
        start_relay(setup)
        port = setup.port(name)
        _, text = get(port, "/metrics")
    assert value(text, "ses_relay_send_rate_limit") == 14.0
    assert value(text, "ses_relay_send_quota_max_24h") == 50000.0
    assert value(text, "ses_relay_send_quota_sent_24h") == 1234.0


def test_a_cached_check_is_asked_once_per_period_and_a_broken_one_means_not_ready() -> None:
    asked: list[int] = []

    async def check() -> tuple[bool, str]:
        asked.append(1)
        if len(asked) > 1:
            raise RuntimeError("upstream exploded")
        return True, "ready"

    async def main() -> list[tuple[bool, str]]:
        shared = CachedCheck(check, cache_seconds=3600)
        routes = MetricsRoutes(shared, lambda: None)  # /readyz reads the same cache
        first = [await shared(), await routes._ready()]
        broken = CachedCheck(check, cache_seconds=-1)  # asked every time
        return [*first, await broken(), await broken()]

    assert asyncio.run(main()) == [(True, "ready"), (True, "ready"),
                                   (False, "check failed: RuntimeError"),
                                   (False, "check failed: RuntimeError")]
    assert len(asked) == 3
