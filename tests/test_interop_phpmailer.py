"""PHPMailer (what WordPress sends mail with) over STARTTLS and SMTPS, with PLAIN and LOGIN.

PHPMailer verifies the relay's certificate against the test CA and the name "localhost",
and sends AUTH PLAIN in two steps (the credentials after a 334).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, SENDER, USER, Setup, events
from peers.interop import PEERS, need, need_file, run, wait_delivered

AUTOLOAD = Path("/usr/share/php/libphp-phpmailer/autoload.php")


def phpmailer(setup: Setup, secure: str, auth: str, **overrides: str):
    need_file(AUTOLOAD, "PHPMailer (libphp-phpmailer)")
    port = setup.implicit_port if secure == "smtps" else setup.starttls_port
    env = {**os.environ, "RELAY_HOST": "127.0.0.1", "RELAY_PORT": str(port),
           "RELAY_SECURE": secure, "RELAY_AUTHTYPE": auth, "RELAY_USER": USER,
           "RELAY_PASSWORD": PASSWORD, "RELAY_CA": str(setup.certs.ca),
           "RELAY_PEER_NAME": "localhost", "MAIL_FROM": SENDER, "MAIL_TO": "to@example.net",
           "MAIL_BCC": "hidden@example.org", "MAIL_SUBJECT": f"PHPMailer {secure} {auth}",
           "MAIL_BODY": "Hello from PHPMailer.", **overrides}
    return run([need("php"), str(PEERS / "phpmailer_send.php")], env=env)


@pytest.mark.parametrize("secure", ["starttls", "smtps"])
@pytest.mark.parametrize("auth", ["PLAIN", "LOGIN"])
def test_phpmailer_delivers_with_each_auth_mechanism_and_tls_mode(
        setup: Setup, start_relay, logs: list[dict[str, Any]], secure: str, auth: str) -> None:
    start_relay(setup)
    result = phpmailer(setup, secure, auth)
    assert result.returncode == 0, result.stdout + result.stderr
    if auth == "PLAIN":  # PHPMailer's way: "AUTH PLAIN", then the credentials after a 334
        assert "CLIENT -> SERVER: AUTH PLAIN\n" in result.stderr
    [mail] = wait_delivered(setup.outbox_dir)
    assert mail.envelope["mail_from"] == SENDER
    assert mail.envelope["rcpt_tos"] == ["to@example.net", "hidden@example.org"]
    assert mail.message["Subject"] == f"PHPMailer {secure} {auth}"
    assert mail.message["Bcc"] is None
    assert b"hidden@example.org" not in mail.data
    assert mail.body.startswith(b"Hello from PHPMailer.")
    [ok] = events(logs, "auth_ok")
    assert (ok["user"], ok["mechanism"]) == (USER, auth)


def test_phpmailer_refuses_a_relay_whose_certificate_does_not_name_the_host(
        setup: Setup, start_relay) -> None:
    start_relay(setup)
    result = phpmailer(setup, "smtps", "PLAIN", RELAY_PEER_NAME="smtp.example.com")
    assert result.returncode == 1
    assert "PHPMailer error" in result.stderr
    assert not setup.outbox_dir.exists() or not list(setup.outbox_dir.glob("*.eml"))
