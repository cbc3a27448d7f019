"""Hostile cases the relay still gets wrong, each pinned as a strict xfail until the module
that owns it is fixed (the fix lies in a file another change is editing). Remove the mark
with the fix: a strict xfail that starts passing fails the suite."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from clients import Dialog
from conftest import PASSWORD, USER, Setup, wait_until


def _login(d: Dialog) -> None:
    assert d.cmd("EHLO client.test").startswith(b"250")
    creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert d.cmd(f"AUTH PLAIN {creds}").startswith(b"235 2.7.0")


@pytest.mark.xfail(strict=True, reason="relay/addresses.py: _ADDRESS_LITERAL takes any "
                   "[...]; RFC 5321 4.1.3 allows a dotted quad of 0-255, IPv6:<address>, "
                   "or tag:content with a registered tag")
@pytest.mark.parametrize("literal", ["[1.2.3]", "[999.1.1.1]", "[foo:bar]", "[IPv6:zz]"])
def test_malformed_address_literal_refused(literal: str, setup: Setup,
                                           start_relay: Any) -> None:
    """Postfix (3.7, default settings): 501 5.1.3 Bad recipient address syntax. The relay
    queues them, and SES then refuses the whole message: every good recipient of it
    bounces for the one bad literal."""
    start_relay(setup)
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as d:
        _login(d)
        assert d.cmd("MAIL FROM:<app@example.com>").startswith(b"250")
        reply = d.cmd(f"RCPT TO:<rcpt@{literal}>")
        assert reply.startswith((b"501 5.1.3", b"553 5.1.3")), reply


@pytest.mark.xfail(strict=True, reason="relay/message.py: _REMOVE drops only Bcc; Postfix's "
                   "message_drop_headers default is bcc, content-length, resent-bcc, "
                   "return-path")
@pytest.mark.parametrize("header", ["Resent-Bcc: hidden@example.org",
                                    "Return-Path: <forged@example.com>",
                                    "Content-Length: 5"])
def test_headers_a_submission_server_drops(header: str, setup: Setup,
                                           start_relay: Any) -> None:
    """Resent-Bcc would show the hidden recipients of a resent message to every recipient
    (as Bcc would, which is removed); Return-Path is the final MTA's to add (RFC 5321
    4.4), a client's is forged; Content-Length misleads mbox readers."""
    start_relay(setup)
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as d:
        _login(d)
        for command in ("MAIL FROM:<app@example.com>", "RCPT TO:<rcpt@example.net>"):
            assert d.cmd(command).startswith(b"250")
        assert d.cmd("DATA").startswith(b"354")
        d.send(f"From: app@example.com\r\n{header}\r\nSubject: drop\r\n\r\nhello\r\n.\r\n"
               .encode())
        assert d.reply().startswith(b"250 2.0.0")
    wait_until(lambda: list(setup.outbox_dir.glob("*.eml")))
    [eml] = setup.outbox_dir.glob("*.eml")
    head = eml.read_bytes().split(b"\r\n\r\n", 1)[0].lower()
    name = header.split(":", 1)[0].lower().encode()
    assert not [h for h in head.split(b"\r\n") if h.startswith(name + b":")]


@pytest.mark.xfail(strict=True, reason="relay/spool.py: the queue folders are made with "
                   "mkdir's default mode (0777 less the umask) and files with 0o666; only "
                   "the systemd unit's UMask=0027 keeps them private")
def test_queued_messages_are_private_whatever_the_umask(setup: Setup, start_relay: Any) -> None:
    """Queued messages (password resets, invoices) are not for other local users to read:
    Postfix keeps its queue in 0700 folders whatever the umask. Started from a shell or a
    container (umask 022), the relay's queue folders are 0755."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        start_relay(setup)
    finally:
        os.umask(old)
    for folder in [setup.queue_dir, *[p for p in setup.queue_dir.iterdir() if p.is_dir()]]:
        mode = stat.S_IMODE(folder.stat().st_mode)
        assert not mode & 0o007, f"{folder}: {oct(mode)}"
