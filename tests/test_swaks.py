"""swaks, a real SMTP client, over STARTTLS and implicit TLS with certificate checks."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from conftest import PASSWORD, SENDER, USER, Setup


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("swaks")
    assert exe, "swaks is not installed: run `make peers` (make test does)"
    return subprocess.run([exe, "--server", "127.0.0.1", "--from", SENDER,
                           "--tls-verify", "--tls-sni", "localhost", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("mode", "auth"), [("--tls", "PLAIN"), ("--tls-on-connect", "LOGIN")])
def test_swaks_delivers_through_each_tls_mode(setup: Setup, start_relay, mode: str,
                                              auth: str) -> None:
    start_relay(setup)
    port = setup.starttls_port if mode == "--tls" else setup.implicit_port
    result = swaks("--port", str(port), mode, "--tls-ca-path", str(setup.certs.ca),
                   "--auth", auth, "--auth-user", USER, "--auth-password", PASSWORD,
                   "--to", "someone@example.net", "--h-Subject", f"swaks {auth}",
                   "--body", "hello from swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    deadline = time.monotonic() + 10
    while not list(setup.outbox_dir.glob("*.eml")) and time.monotonic() < deadline:
        time.sleep(0.02)
    [eml] = setup.outbox_dir.glob("*.eml")
    body = eml.read_bytes()
    assert f"Subject: swaks {auth}".encode() in body
    assert b"\r\n\r\nhello from swaks" in body


def test_swaks_without_auth_is_refused_at_mail(setup: Setup, start_relay) -> None:
    start_relay(setup)
    result = swaks("--port", str(setup.starttls_port), "--tls", "--tls-ca-path",
                   str(setup.certs.ca), "--to", "someone@example.net")
    assert result.returncode != 0
    assert "530 5.7.0 Authentication required" in result.stdout
