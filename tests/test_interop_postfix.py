"""Postfix using the relay as its smarthost: SASL over TLS, certificate checks, retries.

A private Postfix instance (tests/peers/postfix.py) sends to the real `ses-relay serve`
process; what arrives is read from the relay's outbox.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from conftest import PASSWORD, SENDER, USER, Process, Setup
from peers.interop import wait_delivered
from peers.postfix import PrivatePostfix

MESSAGE = (b"From: Cron Daemon <sender@example.com>\r\nTo: to@example.net\r\n"
           b"Subject: {subject}\r\n\r\nHello from Postfix.\r\n")
RECIPIENTS = ["to@example.net", "hidden@example.org"]


@pytest.fixture(scope="module")
def postfix_instance() -> Iterator[PrivatePostfix]:
    instance = PrivatePostfix()
    try:
        yield instance
    finally:
        instance.destroy()


@pytest.fixture
def postfix(postfix_instance: PrivatePostfix) -> Iterator[PrivatePostfix]:
    try:
        yield postfix_instance
    finally:
        postfix_instance.stop()  # always, even when the test failed


def stop_gracefully(relay: Process, timeout: float = 10) -> None:
    relay.proc.terminate()
    try:
        assert relay.proc.wait(timeout) == 0, relay.log_path.read_text()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the relay did not stop within {timeout} s of SIGTERM:\n"
                             f"{relay.log_path.read_text()}") from None


def send(postfix: PrivatePostfix, subject: str) -> None:
    postfix.sendmail(SENDER, RECIPIENTS, MESSAGE.replace(b"{subject}", subject.encode()))


def check_delivered(setup: Setup, subject: str) -> None:
    [mail] = wait_delivered(setup.outbox_dir, timeout=20)
    assert mail.envelope["mail_from"] == SENDER
    assert sorted(mail.envelope["rcpt_tos"]) == sorted(RECIPIENTS)
    assert mail.message["Subject"] == subject
    assert mail.message["Received"] is not None  # Postfix's own trace header
    assert mail.body == b"Hello from Postfix.\r\n"


def test_postfix_relays_through_starttls_with_sasl(setup: Setup, start_process,
                                                   postfix: PrivatePostfix) -> None:
    relay = start_process(setup)
    postfix.configure(port=setup.starttls_port, ca=setup.certs.ca, user=USER,
                      password=PASSWORD)
    send(postfix, "postfix starttls")
    check_delivered(setup, "postfix starttls")
    queued = relay.wait_event("queued")
    postfix.wait_log(rf"status=sent \(250 2\.0\.0 Ok: queued as {queued['queue_id']}\)")
    assert "TLS connection established to 127.0.0.1" in postfix.log()
    relay.wait_event("auth_ok", user=USER)
    postfix.wait_queue_empty()


def test_postfix_relays_through_implicit_tls_after_verifying_the_relay_name(
        setup: Setup, start_process, postfix: PrivatePostfix) -> None:
    start_process(setup)
    postfix.configure(port=setup.implicit_port, ca=setup.certs.ca, user=USER,
                      password=PASSWORD, tls_policy="secure match=localhost",
                      smtp_tls_wrappermode="yes")
    send(postfix, "postfix implicit tls")
    check_delivered(setup, "postfix implicit tls")
    postfix.wait_log(r"Verified TLS connection established to 127\.0\.0\.1")
    postfix.wait_log(r"status=sent \(250 2\.0\.0 Ok: queued as ")


def test_postfix_keeps_the_mail_when_the_relay_certificate_names_another_host(
        setup: Setup, start_process, postfix: PrivatePostfix) -> None:
    start_process(setup)
    postfix.configure(port=setup.starttls_port, ca=setup.certs.ca, user=USER,
                      password=PASSWORD, tls_policy="secure match=smtp.example.com")
    send(postfix, "postfix wrong name")
    postfix.wait_log(r"status=deferred .*[Ss]erver certificate not verified")
    assert "Server certificate not verified" in postfix.queue()
    assert not setup.outbox_dir.exists() or not list(setup.outbox_dir.glob("*.eml"))


def test_postfix_retries_mail_the_relay_deferred_with_a_4xx_once_the_relay_is_back(
        setup: Setup, start_process, postfix: PrivatePostfix) -> None:
    relay = start_process(setup)
    postfix.configure(port=setup.starttls_port, ca=setup.certs.ca, user=USER,
                      password=PASSWORD, tls_policy="secure match=localhost")
    # Make the relay's queue unwritable (a file where its draft folder was): it must then
    # answer 451 rather than take the message.
    drafts = setup.queue_dir / "tmp"
    assert drafts.is_dir(), f"the relay's queue layout changed: no {drafts}; update this test"
    moved = setup.queue_dir / "tmp.moved"
    drafts.rename(moved)
    drafts.write_text("")
    send(postfix, "postfix retry")
    postfix.wait_log(r"status=deferred \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 451 4\.3\.0")
    relay.wait_event("queue_write_failed")
    assert "451 4.3.0" in postfix.queue()
    assert not setup.outbox_dir.exists() or not list(setup.outbox_dir.glob("*.eml"))

    stop_gracefully(relay)  # as `systemctl restart` would
    drafts.unlink()
    moved.rename(drafts)
    relay = start_process(setup)  # the same configuration, on port 0: another port
    postfix.retarget(setup.starttls_port)  # keeps the deferred message
    postfix.flush()
    check_delivered(setup, "postfix retry")
    postfix.wait_log(r"status=sent \(250 2\.0\.0 Ok: queued as ")
    postfix.wait_queue_empty()
    relay.wait_event("delivered")
