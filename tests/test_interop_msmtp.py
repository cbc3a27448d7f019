"""msmtp (the sendmail of cron jobs and small hosts) over STARTTLS and implicit TLS.

msmtp checks the relay's certificate against the test CA and the name "localhost",
authenticates with PLAIN, and takes its recipients from To/Cc/Bcc (`-t`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import PASSWORD, SENDER, USER, Moto, Setup
from peers.interop import need, run, wait_delivered

BLIND = "hidden@example.org"


def message(subject: str) -> bytes:
    return (f"From: Sender <{SENDER}>\r\nTo: to@example.net\r\nCc: cc@example.net\r\n"
            f"Bcc: {BLIND}\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@example.com>\r\n"
            "\r\nHello from msmtp.\r\n.a line that starts with a dot\r\n").encode()


def msmtp(tmp_path: Path, port: int, ca: Path, data: bytes, *extra: str):
    rc = tmp_path / "msmtprc"  # an empty configuration: only the command line counts
    rc.write_text("")
    rc.chmod(0o600)
    return run([need("msmtp"), f"--file={rc}", "-t", "--host=127.0.0.1", f"--port={port}",
                "--tls=on", f"--tls-trust-file={ca}", "--tls-host-override=localhost",
                "--auth=plain", f"--user={USER}", '--passwordeval=printf %s "$RELAY_PASSWORD"',
                f"--from={SENDER}", "--domain=msmtp.test", "--timeout=10", *extra],
               input=data.decode(), env={**os.environ, "RELAY_PASSWORD": PASSWORD})


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_msmtp_delivers_with_bcc_recipient_only_in_the_envelope(
        setup: Setup, start_relay, tmp_path: Path, mode: str) -> None:
    start_relay(setup)
    if mode == "starttls":
        port, extra = setup.starttls_port, ["--tls-starttls=on"]
    else:
        # msmtp leaves the Bcc header in here: the relay must remove it itself.
        port, extra = setup.implicit_port, ["--tls-starttls=off", "--remove-bcc-headers=off"]
    result = msmtp(tmp_path, port, setup.certs.ca, message(f"msmtp-{mode}"), *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    [mail] = wait_delivered(setup.outbox_dir)
    assert mail.envelope["mail_from"] == SENDER
    assert sorted(mail.envelope["rcpt_tos"]) == ["cc@example.net", BLIND, "to@example.net"]
    assert mail.message["Bcc"] is None
    assert BLIND.encode() not in mail.data
    assert mail.message["Subject"] == f"msmtp-{mode}"
    assert mail.body == b"Hello from msmtp.\r\n.a line that starts with a dot\r\n"


def test_msmtp_mail_reaches_ses_byte_for_byte_without_the_bcc_header(
        make_setup, start_process, moto: Moto, tmp_path: Path) -> None:
    setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=moto.url)
    relay = start_process(setup)
    sent_bytes = message("msmtp-ses")
    result = msmtp(tmp_path, setup.implicit_port, setup.certs.ca, sent_bytes,
                   "--tls-starttls=off", "--remove-bcc-headers=off")
    assert result.returncode == 0, result.stdout + result.stderr
    [sent] = moto.wait_sent(1)
    assert sent["raw_data"].encode() == sent_bytes.replace(f"Bcc: {BLIND}\r\n".encode(), b"")
    assert sent["source"] == SENDER
    assert BLIND in sent["destinations"]
    delivered = relay.wait_event("delivered")
    assert delivered["ses_message_id"] == sent["id"]
    assert relay.terminate() == 0
