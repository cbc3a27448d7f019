"""Submission over STARTTLS and implicit TLS with AUTH, against the relay server object."""

from __future__ import annotations

import base64
import gc
import json
import smtplib
import ssl
import time
import weakref
from pathlib import Path

import pytest
from clients import Dialog, has_enhanced_code, implicit, starttls
from conftest import PASSWORD, SENDER, USER, Setup, wait_until

from relay.smtp import tlscontext

MESSAGE = (b"From: Sender <sender@example.com>\r\nTo: rcpt@example.net\r\n"
           b"Subject: hello\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <m1@example.com>\r\n\r\nline one\r\n.leading dot\r\n")


def wait_outbox(outbox: Path, count: int = 1, timeout: float = 10) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(outbox.glob("*.eml")) if outbox.exists() else []
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"expected {count} message(s) in {outbox}")


def test_starttls_and_plain_auth_deliver_the_exact_bytes_with_bcc_in_the_envelope(
        setup: Setup, start_relay) -> None:
    start_relay(setup)
    with starttls(setup.starttls_port, setup.certs.ca, USER, PASSWORD) as s:
        assert s.docmd("NOOP")[0] == 250
        refused = s.sendmail(SENDER, ["rcpt@example.net", "hidden@example.org"], MESSAGE)
    assert refused == {}
    [eml] = wait_outbox(setup.outbox_dir)
    assert eml.read_bytes() == MESSAGE
    envelope = json.loads(eml.with_suffix(".json").read_text())
    assert envelope["mail_from"] == SENDER
    assert envelope["rcpt_tos"] == ["rcpt@example.net", "hidden@example.org"]


def test_implicit_tls_with_login_auth_delivers(setup: Setup, start_relay) -> None:
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca) as s:
        s.user, s.password = USER, PASSWORD
        code, _ = s.auth("LOGIN", s.auth_login)
        assert code == 235
        s.sendmail(SENDER, ["rcpt@example.net"], MESSAGE)
    [eml] = wait_outbox(setup.outbox_dir)
    assert eml.read_bytes() == MESSAGE


def test_reply_to_the_final_dot_names_the_queue_id(setup: Setup, start_relay) -> None:
    start_relay(setup)
    with starttls(setup.starttls_port, setup.certs.ca, USER, PASSWORD) as s:
        s.mail(SENDER)
        s.rcpt("rcpt@example.net")
        code, text = s.data(MESSAGE)
    assert code == 250
    assert text.startswith(b"2.0.0 Ok: queued as ")
    assert len(text.split()[-1]) == 18


def test_plain_auth_in_two_steps_as_phpmailer_sends_it(setup: Setup, start_relay) -> None:
    start_relay(setup)
    d = Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True)
    d.cmd("EHLO client.test")
    assert d.cmd("AUTH PLAIN").startswith(b"334 ")
    creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    assert d.cmd(creds).startswith(b"235 2.7.0")
    assert d.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"250 2.1.0")
    d.close()


def test_auth_is_not_offered_or_accepted_before_starttls(setup: Setup, start_relay) -> None:
    start_relay(setup)
    d = Dialog(setup.starttls_port, setup.certs.ca)
    ehlo = d.cmd("EHLO client.test")
    assert b"STARTTLS" in ehlo
    assert b"AUTH" not in ehlo
    creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert d.cmd(f"AUTH PLAIN {creds}").startswith(b"530 5.7.0")
    assert d.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"530 5.7.0")
    assert d.starttls().startswith(b"220 2.0.0")
    assert b"AUTH LOGIN PLAIN" in d.cmd("EHLO client.test")
    d.close()


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_mail_before_auth_is_refused_with_530(setup: Setup, start_relay, listener: str) -> None:
    start_relay(setup)
    client = (starttls(setup.starttls_port, setup.certs.ca) if listener == "starttls"
              else implicit(setup.implicit_port, setup.certs.ca))
    with client as s:
        code, text = s.mail(SENDER)
    assert (code, text) == (530, b"5.7.0 Authentication required")


def test_wrong_password_is_refused_and_logged_without_the_password(
        setup: Setup, start_relay, logs: list[dict[str, object]]) -> None:
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca) as s, \
            pytest.raises(smtplib.SMTPAuthenticationError) as err:
        s.login(USER, "wrong password 123")
    assert err.value.smtp_code == 535
    assert err.value.smtp_error.startswith(b"5.7.8")
    failures = [e for e in logs if e["event"] == "auth_failed"]
    # smtplib tries PLAIN, then LOGIN: one line per attempt.
    assert [(f["user"], f["mechanism"]) for f in failures] == [(USER, "PLAIN"), (USER, "LOGIN")]
    out = repr(logs)
    assert "wrong password 123" not in out
    assert base64.b64encode(b"wrong password 123").decode() not in out


def test_unknown_user_is_refused_like_a_wrong_password(setup: Setup, start_relay) -> None:
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca) as s, \
            pytest.raises(smtplib.SMTPAuthenticationError) as err:
        s.login("nobody", PASSWORD)
    assert err.value.smtp_code == 535


def test_every_reply_carries_an_enhanced_status_code(setup: Setup, start_relay) -> None:
    start_relay(setup)
    d = Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True)
    d.cmd("EHLO client.test")
    creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    script = ["NOOP", "RSET", "VRFY someone", "HELP", "EXPN list", "BOGUS", "RCPT TO:<a@b.c>",
              "DATA", "MAIL FROM:<not an address>", f"AUTH PLAIN {creds}", "AUTH PLAIN xyz",
              f"MAIL FROM:<{SENDER}>", f"MAIL FROM:<{SENDER}>", "RCPT TO:<rcpt@example.net>",
              "RCPT TO:<bad address>", "DATA"]
    for line in script:
        reply = d.cmd(line)
        if line == "DATA" and reply.startswith(b"354"):
            reply = d.cmd(b"Subject: x\r\n\r\nbody\r\n.")
        assert has_enhanced_code(reply), f"{line!r} -> {reply!r}"
    assert has_enhanced_code(d.cmd("QUIT"))
    d.close()


def test_smtputf8_is_not_advertised(setup: Setup, start_relay) -> None:
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca) as s:
        assert not s.has_extn("smtputf8")
        assert s.has_extn("size")


def test_an_exception_in_a_hook_answers_451_without_internals(
        setup: Setup, start_relay, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = start_relay(setup)

    def broken() -> object:
        raise RuntimeError("internal detail /var/secret")

    monkeypatch.setattr(relay.relay.spool, "draft", broken)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.mail(SENDER)
        s.rcpt("rcpt@example.net")
        code, text = s.docmd("DATA")
        assert code == 451
        assert text.startswith(b"4.3.0")
        assert b"secret" not in text and b"RuntimeError" not in text
        assert s.noop()[0] == 250  # the session goes on


def test_a_failing_queue_write_answers_451_not_250(setup: Setup, start_relay) -> None:
    relay = start_relay(setup)
    # Make the final rename fail: the committed-messages folder is gone.
    active = setup.queue_dir / "active"
    active.rename(setup.queue_dir / "moved-away")
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.mail(SENDER)
        s.rcpt("rcpt@example.net")
        code, text = s.data(MESSAGE)
    assert code == 451
    assert text.startswith(b"4.3.0")
    assert list((setup.queue_dir / "tmp").iterdir()) == []
    assert relay.relay.scheduler is not None and relay.relay.scheduler.pending == 0


def test_a_client_that_disconnects_mid_data_leaves_nothing_behind(
        setup: Setup, start_relay) -> None:
    relay = start_relay(setup)
    d = Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True)
    d.cmd("EHLO client.test")
    creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    d.cmd(f"AUTH PLAIN {creds}")
    d.cmd(f"MAIL FROM:<{SENDER}>")
    d.cmd("RCPT TO:<rcpt@example.net>")
    assert d.cmd("DATA").startswith(b"354")
    d.send(b"Subject: half\r\n\r\n" + (b"x" * 500 + b"\r\n") * 600)  # 300 KB: on disk
    deadline = time.monotonic() + 5
    while not list((setup.queue_dir / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(list((setup.queue_dir / "tmp").iterdir())) == 1  # the draft existed
    d.close()
    deadline = time.monotonic() + 5
    while list((setup.queue_dir / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list((setup.queue_dir / "tmp").iterdir()) == []
    assert list((setup.queue_dir / "active").iterdir()) == []
    assert not setup.outbox_dir.exists() or list(setup.outbox_dir.iterdir()) == []
    assert relay.relay.scheduler is not None and relay.relay.scheduler.pending == 0


def test_listeners_require_tls_1_2_or_newer(certs) -> None:
    ctx = tlscontext.build(Path(certs.cert), Path(certs.key))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_banner_and_ehlo_use_the_configured_hostname(setup: Setup, start_relay) -> None:
    start_relay(setup)
    d = Dialog(setup.starttls_port)
    assert d.greeting.startswith(b"220 relay.test ESMTP")
    assert d.cmd("EHLO client.test").startswith(b"250-relay.test\r\n")
    d.close()


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_a_finished_session_is_freed_without_the_garbage_collector(
        setup: Setup, start_relay, tls: str) -> None:
    # A session that only the cycle collector could free piles up in its oldest
    # generation under load, and each full collection then stalls every session.
    relay = start_relay(setup)
    gc.disable()
    try:
        if tls == "starttls":
            client = starttls(setup.starttls_port, setup.certs.ca, USER, PASSWORD)
        else:
            client = implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD)
        with client as s:
            s.sendmail(SENDER, ["to@example.net"], b"Subject: x\r\n\r\nbody\r\n")
            [session] = [weakref.ref(server) for handler in relay.relay.handlers
                         for server in list(handler.live)]
        wait_until(lambda: session() is None, timeout=5)
    finally:
        gc.enable()
