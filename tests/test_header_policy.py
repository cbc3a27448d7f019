"""What the relay does to From: and the X-SES-* headers, as a client and the log see it:
an smtplib client on the in-process relay, the outbox holding the bytes SES would get."""

from __future__ import annotations

from typing import Any

from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, events
from peers.interop import wait_delivered


def test_an_added_from_and_ignored_ses_headers_are_logged(
        setup: Setup, start_relay: Any, logs: list[dict[str, Any]]) -> None:
    setup.doc.setdefault("policy", {})["ses_headers"] = "ignore"
    setup.write()
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["to@example.net"],
                   b"X-SES-CONFIGURATION-SET: elsewhere\r\nSubject: no from\r\n\r\nbody\r\n")
    [mail] = wait_delivered(setup.outbox_dir)
    assert mail.message["From"] == SENDER
    assert mail.message["X-SES-CONFIGURATION-SET"] is None
    assert mail.envelope["configuration_set"] is None
    [added] = events(logs, "from_added")
    assert added["user"] == USER and added["sender"] == SENDER
    [ignored] = events(logs, "ses_headers_ignored")
    assert ignored["user"] == USER
