"""STARTTLS where TLS is already up, with a real client (the dialogs in tests/dialogs cover
the replies): EHLO offers STARTTLS only on a plaintext STARTTLS listener."""

from __future__ import annotations

import smtplib

from clients import implicit, tls_context
from conftest import Setup


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
