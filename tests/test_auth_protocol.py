"""The SASL exchange on the wire: over-long responses, and PLAIN's authorization identity."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clients import Dialog, has_enhanced_code
from conftest import PASSWORD, SENDER, USER, InProcess, Setup, events


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def dialog(setup: Setup, start_relay: Callable[[Setup], InProcess]) -> Iterator[Dialog]:
    start_relay(setup)
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as d:
        d.cmd("EHLO client.test")
        yield d


@pytest.mark.parametrize("step", ["username", "password", "plain"])
def test_an_over_long_sasl_response_is_refused_whole_and_its_tail_never_runs(
        dialog: Dialog, step: str) -> None:
    if step == "plain":
        assert dialog.cmd("AUTH PLAIN").startswith(b"334 ")
    else:
        assert dialog.cmd("AUTH LOGIN").startswith(b"334 ")
        if step == "password":
            assert dialog.cmd(b64(USER)).startswith(b"334 ")
    # Past the line limit, in pieces: the tail looks like a command of its own.
    dialog.send(b"A" * 3000)
    dialog.send(b"VRFY tail\r\n")
    reply = dialog.reply()
    assert reply.startswith(b"500 5.5.6 "), reply
    assert has_enhanced_code(reply)
    assert dialog.cmd("NOOP").startswith(b"250 ")  # not VRFY's 252: the tail was dropped
    assert dialog.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"530 5.7.0")  # not logged in


def test_an_over_long_sasl_response_followed_by_a_command_answers_both(
        dialog: Dialog) -> None:
    assert dialog.cmd("AUTH LOGIN").startswith(b"334 ")
    dialog.send(b"A" * 2000 + b"\r\nMAIL FROM:<" + SENDER.encode() + b">\r\n")
    assert dialog.reply().startswith(b"500 5.5.6 ")
    assert dialog.reply().startswith(b"530 5.7.0")  # its own command, not logged in
    assert dialog.cmd("NOOP").startswith(b"250 ")


def test_an_over_long_initial_response_on_the_auth_line_is_one_error(dialog: Dialog) -> None:
    dialog.send(b"AUTH PLAIN " + b"A" * 3000)
    dialog.send(b"VRFY tail\r\n")
    reply = dialog.reply()
    assert reply.startswith(b"500 5.5."), reply
    assert dialog.cmd("NOOP").startswith(b"250 ")
    assert dialog.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"530 5.7.0")


def test_a_long_initial_response_within_the_line_limit_is_checked(dialog: Dialog) -> None:
    # 600 base64 characters: over a command's 512, within the line's 1,000.
    reply = dialog.cmd("AUTH PLAIN " + b64("\0".join(("", USER, "x" * 440))))
    assert reply.startswith(b"535 5.7.8 "), reply


@pytest.mark.parametrize("authzid", ["admin", "APP", f"{USER} "])
def test_plain_with_another_authorization_identity_is_refused(
        dialog: Dialog, logs: list[dict[str, Any]], authzid: str) -> None:
    reply = dialog.cmd("AUTH PLAIN " + b64("\0".join((authzid, USER, PASSWORD))))
    assert reply.startswith(b"535 5.7.8 "), reply
    assert b"admin" not in reply
    assert dialog.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"530 5.7.0")
    [failed] = events(logs, "auth_failed")
    assert failed["user"] == USER


@pytest.mark.parametrize("authzid", ["", USER])
def test_plain_with_no_or_the_same_authorization_identity_logs_in(
        dialog: Dialog, authzid: str) -> None:
    reply = dialog.cmd("AUTH PLAIN " + b64("\0".join((authzid, USER, PASSWORD))))
    assert reply.startswith(b"235 2.7.0")
    assert dialog.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"250 2.1.0")


def test_plain_in_two_steps_with_another_authorization_identity_is_refused(
        dialog: Dialog) -> None:
    assert dialog.cmd("AUTH PLAIN").startswith(b"334 ")
    assert dialog.cmd(b64("\0".join(("admin", USER, PASSWORD)))).startswith(b"535 5.7.8 ")
