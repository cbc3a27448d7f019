"""Envelope recipients as SES receives them, with a real client and a fake SES endpoint."""

from __future__ import annotations

from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, wait_until
from fakeses import FakeSES

MESSAGE = (b"From: sender@example.com\r\nTo: a@example.net\r\nSubject: twice\r\n"
           b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <twice@example.com>\r\n"
           b"\r\nbody\r\n")


def test_a_recipient_given_twice_is_sent_to_once(make_setup, start_relay) -> None:
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        start_relay(setup)
        rcpts = ["a@example.net", "b@example.net", "a@example.net", "a@EXAMPLE.NET",
                 "b@Example.Net"]
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            assert s.sendmail(SENDER, rcpts, MESSAGE) == {}
            # A second message on the same session: a new envelope, a new list.
            assert s.sendmail(SENDER, ["a@example.net", "a@example.net"], MESSAGE) == {}
        wait_until(lambda: len(ses.accepted) == 2)
    assert sorted(m["to"] for m in ses.accepted) == [["a@example.net"],
                                                     ["a@example.net", "b@example.net"]]
    assert all(m["raw"] == MESSAGE for m in ses.accepted)
