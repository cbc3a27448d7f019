"""STARTTLS where TLS is already up, with a real client (the dialogs in tests/dialogs cover
the replies): EHLO offers STARTTLS only on a plaintext STARTTLS listener."""

from __future__ import annotations

import smtplib

import pytest
from clients import implicit, starttls, tls_context
from conftest import PASSWORD, SENDER, USER, Setup, wait_until


def test_ehlo_offers_starttls_only_before_tls(setup: Setup, start_relay) -> None:
    start_relay(setup)
    with smtplib.SMTP("127.0.0.1", setup.starttls_port, local_hostname="client.test",
                      timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=tls_context(setup.certs.ca))
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        assert s.docmd("STARTTLS")[0] == 554
        assert s.noop()[0] == 250  # still talking over the first TLS layer
    with implicit(setup.implicit_port, setup.certs.ca) as s:
        assert not s.has_extn("starttls")
        assert s.docmd("STARTTLS") == (554, b"5.5.1 TLS already active")
        assert s.noop()[0] == 250


@pytest.mark.parametrize("path", ["starttls", "implicit"])
def test_a_large_message_over_tls_arrives_byte_for_byte(setup: Setup, start_relay,
                                                         path: str) -> None:
    """The TLS layer reads the socket in 32 KiB slices (relay.smtp.tlsstart): a message of
    many slices, with lines that straddle them, arrives whole and unchanged."""
    start_relay(setup)
    lines = [f"{i:07d} ".encode() + bytes([65 + i % 26]) * (i % 900) for i in range(4000)]
    body = b"Subject: large\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"  # about 1.8 MB
    connect = starttls if path == "starttls" else implicit
    port = setup.starttls_port if path == "starttls" else setup.implicit_port
    with connect(port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["rcpt@example.net"], body)
    wait_until(lambda: list(setup.outbox_dir.glob("*.eml")))
    (eml,) = setup.outbox_dir.glob("*.eml")
    assert eml.read_bytes().endswith(body[body.index(b"\r\n\r\n"):])
