"""nodemailer (Node.js apps) with `secure: true` on the implicit-TLS port and
`requireTLS: true` on the STARTTLS port, checking the certificate against the test CA."""

from __future__ import annotations

import json

import pytest
from conftest import PASSWORD, SENDER, USER, Setup
from peers.interop import PEERS, need, need_file, run, wait_delivered


def nodemailer(setup: Setup, mode: str, servername: str = "localhost"):
    need_file(PEERS / "node_modules" / "nodemailer" / "package.json", "nodemailer (npm)")
    implicit = mode == "implicit"
    options = {"host": "127.0.0.1",
               "port": setup.implicit_port if implicit else setup.starttls_port,
               "secure": implicit, "requireTLS": not implicit, "servername": servername,
               "user": USER, "pass": PASSWORD, "ca": str(setup.certs.ca),
               "from": f"Node App <{SENDER}>", "to": "to@example.net",
               "bcc": "hidden@example.org", "subject": f"nodemailer {mode}",
               "text": "Hello from nodemailer."}
    return run([need("node"), str(PEERS / "nodemailer_send.js"), json.dumps(options)])


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_nodemailer_delivers_over_each_tls_mode(setup: Setup, start_relay, mode: str) -> None:
    start_relay(setup)
    result = nodemailer(setup, mode)
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    assert info["accepted"] == ["to@example.net", "hidden@example.org"]
    assert info["response"].startswith("250 2.0.0 Ok: queued as ")
    [mail] = wait_delivered(setup.outbox_dir)
    assert mail.envelope["mail_from"] == SENDER
    assert mail.envelope["rcpt_tos"] == ["to@example.net", "hidden@example.org"]
    assert mail.message["Subject"] == f"nodemailer {mode}"
    assert mail.message["Message-ID"] == info["messageId"]
    assert mail.message["Bcc"] is None
    assert b"Hello from nodemailer." in mail.body


def test_nodemailer_refuses_a_relay_whose_certificate_does_not_name_the_host(
        setup: Setup, start_relay) -> None:
    start_relay(setup)
    result = nodemailer(setup, "starttls", servername="smtp.example.com")
    assert result.returncode == 1
    assert "nodemailer error" in result.stderr
    assert not setup.outbox_dir.exists() or not list(setup.outbox_dir.glob("*.eml"))
