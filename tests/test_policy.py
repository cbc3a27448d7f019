"""Policy with real clients: open-relay checks, recipient chunks, SES options, size."""

from __future__ import annotations

import json
import smtplib
from typing import Any

import pytest
from clients import Dialog, implicit
from conftest import PASSWORD, SENDER, USER, InProcess, Setup, events, wait_until
from fakeses import Failure, FakeSES

MESSAGE = (b"From: sender@example.com\r\nSubject: many\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000"
           b"\r\nMessage-ID: <many@example.com>\r\n\r\nbody\r\n")


def add_listener(setup: Setup, **listener: Any) -> str:
    """A listener on port 0; its name in ``setup.ports`` once started."""
    name = f"extra{len(setup.doc['listeners'])}"
    setup.doc["listeners"].append({"name": name, "address": "127.0.0.1", "port": 0,
                                   **listener})
    setup.write()
    return name


@pytest.mark.parametrize("listener", [
    {"tls": "starttls", "auth": "optional", "trusted_networks": ["192.0.2.0/24"]},
    {"tls": "implicit", "auth": "optional", "trusted_networks": ["2001:db8::/32"]},
    {"tls": "none", "auth": "none", "trusted_networks": ["198.51.100.0/24"]},
])
def test_no_listener_relays_for_an_unauthenticated_untrusted_client(
        setup: Setup, start_relay, listener: dict[str, Any]) -> None:
    name = add_listener(setup, **listener)
    start_relay(setup)
    port = setup.port(name)
    for p, tls in [(setup.starttls_port, "starttls"), (setup.implicit_port, "implicit"),
                   (port, listener["tls"])]:
        with Dialog(p, setup.certs.ca, implicit_tls=tls == "implicit") as d:
            d.cmd("EHLO client.test")
            if tls == "starttls":
                d.starttls()
                d.cmd("EHLO client.test")
            for command in ("MAIL FROM:<spammer@example.org>", "MAIL FROM:<>"):
                reply = d.cmd(command)
                assert reply.startswith(b"530 5.7.0"), (p, tls, command, reply)
            assert d.cmd("RCPT TO:<victim@example.net>").startswith((b"530", b"503"))
            assert d.cmd("DATA").startswith((b"530", b"503"))
    assert list(setup.outbox_dir.glob("*")) == []


def test_a_trusted_network_may_send_without_auth(setup: Setup, start_relay) -> None:
    name = add_listener(setup, tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
    start_relay(setup)
    port = setup.port(name)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        assert not s.has_extn("auth")
        assert s.sendmail(SENDER, ["someone@example.net"], MESSAGE) == {}
    wait_until(lambda: list(setup.outbox_dir.glob("*.eml")))


def test_recipients_go_to_ses_in_chunks_of_50_and_a_retry_resends_only_the_failed_chunk(
        make_setup, start_relay, logs) -> None:
    rcpts = [f"user{i:03d}@example.net" for i in range(120)]
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        setup.doc["limits"] = {"max_recipients": 150}
        setup.write()
        # Chunk 1 goes through; chunk 2 is throttled once; then everything goes through.
        ses.rule = lambda n: Failure(429, "TooManyRequestsException") if n == 2 else None
        start_relay(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            assert s.sendmail(SENDER, rcpts, MESSAGE) == {}
        wait_until(lambda: sum(len(m["to"]) for m in ses.accepted) >= 120, timeout=15)
        sent = [r for m in ses.accepted for r in m["to"]]
        assert sorted(sent) == rcpts  # every recipient exactly once
        assert [len(m["to"]) for m in ses.accepted] == [50, 50, 20]
        assert ses.calls == 4
    assert [len(e["rcpts"]) for e in events(logs, "delivered")] == [50, 50, 20]
    assert [e["code"] for e in events(logs, "throttled")] == ["TooManyRequestsException"]


def test_chunk_progress_survives_a_restart(make_setup, start_relay) -> None:
    rcpts = [f"user{i:03d}@example.net" for i in range(75)]
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        setup.doc["queue"]["min_backoff"] = "1h"  # no retry inside the first life
        setup.doc["queue"]["max_backoff"] = "2h"
        setup.write()
        ses.rule = lambda n: Failure(503, "ServiceUnavailable") if n >= 2 else None
        first: InProcess = start_relay(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, rcpts, MESSAGE)
        wait_until(lambda: ses.calls >= 2)
        first.stop()
        [state] = (setup.queue_dir / "state").glob("*.json")
        assert sorted(json.loads(state.read_text())["done"]) == rcpts[:50]
        ses.rule = None
        start_relay(setup)  # second life: the backlog is retried at once
        wait_until(lambda: len(ses.accepted) == 2, timeout=15)
    assert [len(m["to"]) for m in ses.accepted] == [50, 25]
    assert sorted(r for m in ses.accepted for r in m["to"]) == rcpts


def test_configuration_set_and_tags_reach_the_ses_api(make_setup, start_relay) -> None:
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        setup.doc["policy"] = {"configuration_set": "default-set", "tags": {"env": "prod"}}
        setup.write()
        start_relay(setup)
        message = MESSAGE.replace(b"Subject: many\r\n",
                                  b"Subject: many\r\nX-SES-MESSAGE-TAGS: campaign=fall\r\n")
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, ["a@example.net"], message)
        wait_until(lambda: ses.accepted)
    [sent] = ses.accepted
    assert sent["configuration_set"] == "default-set"
    assert sent["tags"] == {"env": "prod", "campaign": "fall"}
    assert b"X-SES-MESSAGE-TAGS" not in sent["raw"]


def test_ehlo_size_is_the_configured_limit_capped_by_the_transport(
        make_setup, start_relay, refused_url) -> None:
    setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=refused_url)
    setup.doc["limits"] = {"max_message_size": "100MB"}
    setup.write()
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca) as s:
        # SESv2 takes 40 MB after base64, i.e. 30,000,000 bytes of raw message.
        assert s.esmtp_features["size"] == "30000000"
