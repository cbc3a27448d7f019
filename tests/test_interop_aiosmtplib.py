"""aiosmtplib (asyncio Python apps) over STARTTLS and implicit TLS, verifying "localhost"."""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
from conftest import PASSWORD, SENDER, USER, Setup, events
from peers.interop import wait_delivered


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Async App <{SENDER}>"
    msg["To"] = "to@example.net"
    msg["Bcc"] = "hidden@example.org"
    msg["Subject"] = subject
    msg.set_content("Hello from aiosmtplib.\n")
    return msg


@pytest.mark.parametrize(("mode", "mechanism"), [("starttls", "PLAIN"), ("implicit", "LOGIN"),
                                                 ("starttls", "LOGIN"), ("implicit", "PLAIN")])
def test_aiosmtplib_delivers_over_each_tls_mode_and_auth_mechanism(
        setup: Setup, start_relay, logs: list[dict[str, Any]], mode: str,
        mechanism: str) -> None:
    start_relay(setup)
    context = ssl.create_default_context(cafile=str(setup.certs.ca))
    implicit = mode == "implicit"

    async def send() -> tuple[dict[str, Any], str]:
        smtp = aiosmtplib.SMTP(hostname="localhost",
                               port=setup.implicit_port if implicit else setup.starttls_port,
                               use_tls=implicit, start_tls=not implicit, tls_context=context,
                               local_hostname="aiosmtplib.test", timeout=10)
        async with smtp:
            # login() would pick PLAIN; force each mechanism the relay offers.
            await smtp.ehlo()
            auth = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
            await auth(USER, PASSWORD)
            result = await smtp.send_message(message(f"aiosmtplib {mode} {mechanism}"))
        # The TLS transport finishes closing in callbacks after QUIT; asyncio.run would
        # close the loop first and leave the socket to the garbage collector.
        await asyncio.sleep(0.2)
        return result

    refused, reply = asyncio.run(asyncio.wait_for(send(), 30))
    assert refused == {}
    assert reply.startswith("2.0.0 Ok: queued as ")
    [mail] = wait_delivered(setup.outbox_dir)
    assert mail.envelope["mail_from"] == SENDER
    assert mail.envelope["rcpt_tos"] == ["to@example.net", "hidden@example.org"]
    assert mail.message["Subject"] == f"aiosmtplib {mode} {mechanism}"
    assert mail.message["Bcc"] is None
    assert mail.body == b"Hello from aiosmtplib.\r\n"
    [ok] = events(logs, "auth_ok")
    assert ok["mechanism"] == mechanism
