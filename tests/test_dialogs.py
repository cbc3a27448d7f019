"""Scripted raw SMTP dialogs, one readable file per case under tests/dialogs/.

Each file is a list of steps, one per line (``#`` starts a comment):

    config limits.max_recipients=2   set a config key (YAML value) before the relay starts
    suppress ADDRESS                 put ADDRESS on the suppression list before start
    connect starttls|implicit        open a connection to that listener
    login [USER]                     EHLO and AUTH PLAIN (the default user, or USER:
                                     restricted, restricted-ses; see users_file below)
    starttls                         STARTTLS, expect 220, then TLS
    starttls-handshake               TLS now (after a STARTTLS sent with >>)
    > TEXT                           send TEXT and CRLF
    >> TEXT                          send TEXT as is; \\r \\n \\x00 escapes are decoded,
                                     and {c*N} stands for N times the character c
    < PREFIX                         read one reply; its last line must start with PREFIX
    closed                           the server must have closed the connection
    delivered N                      exactly N messages reach the outbox
    rcpts A,B                        the delivered message's envelope recipients
    from ADDRESS                     the delivered message's envelope sender
    header TEXT | noheader NAME      the delivered message has (or lacks) a header line
    every-header TEXT                every delivered message has that header line
    ses KEY=VALUE                    configuration_set / tag:NAME the message carries
                                     (VALUE - : it carries none)

After the last step the relay must still answer a new connection.
"""

from __future__ import annotations

import base64
import codecs
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from clients import Dialog
from conftest import PASSWORD, USER, Setup

from relay.suppression import SuppressionList

DIALOGS = sorted((Path(__file__).parent / "dialogs").glob("*.txt"))
RESTRICTED_USER, RESTRICTED_PASSWORD = "restricted", "restricted-password"
# Restricted too, but its X-SES-* headers may choose the configuration set and tags.
RESTRICTED_SES_USER = "restricted-ses"


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    doc[last] = value


class Runner:
    def __init__(self, setup: Setup, start_relay: Any) -> None:
        self.setup = setup
        self.start_relay = start_relay
        self.started = False
        self.dialog: Dialog | None = None

    def ensure_started(self) -> None:
        if not self.started:
            self.setup.write()
            self.start_relay(self.setup)
            self.started = True

    def step(self, line: str) -> None:
        verb, _, arg = line.partition(" ")
        name = {">": "send", ">>": "raw", "<": "expect"}.get(verb, verb).replace("-", "_")
        getattr(self, "do_" + name)(arg)

    def do_config(self, arg: str) -> None:
        key, _, value = arg.partition("=")
        _set(self.setup.doc, key.strip(), yaml.safe_load(value))

    def do_suppress(self, arg: str) -> None:
        db = SuppressionList(Path(self.setup.doc["suppression"]["database"]))
        db.add(arg.strip(), "bounce", "dialog")
        db.close()

    def do_connect(self, arg: str) -> None:
        self.ensure_started()
        implicit = arg.strip() == "implicit"
        port = self.setup.implicit_port if implicit else self.setup.starttls_port
        self.dialog = Dialog(port, self.setup.certs.ca, implicit_tls=implicit)
        assert self.dialog.greeting.startswith(b"220 ")

    def do_starttls(self, _: str) -> None:
        assert self.dialog is not None
        assert self.dialog.starttls().startswith(b"220 2.0.0")

    def do_starttls_handshake(self, _: str) -> None:
        """TLS on a connection whose STARTTLS was sent raw (pipelined with other commands)."""
        assert self.dialog is not None and self.dialog.ca is not None
        from clients import tls_context

        self.dialog.sock = tls_context(self.dialog.ca).wrap_socket(
            self.dialog.sock, server_hostname="localhost")
        self.dialog.buf = b""

    def do_login(self, arg: str) -> None:
        assert self.dialog is not None
        name = arg.strip()
        user, password = ((name, RESTRICTED_PASSWORD)
                          if name in (RESTRICTED_USER, RESTRICTED_SES_USER) else (USER, PASSWORD))
        assert self.dialog.cmd("EHLO client.test").startswith(b"250")
        creds = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        assert self.dialog.cmd(f"AUTH PLAIN {creds}").startswith(b"235 2.7.0")

    def do_send(self, arg: str) -> None:
        assert self.dialog is not None
        self.dialog.send(arg.encode("utf-8") + b"\r\n")

    def do_raw(self, arg: str) -> None:
        assert self.dialog is not None
        text = re.sub(r"\{(.)\*(\d+)\}", lambda m: m.group(1) * int(m.group(2)), arg)
        self.dialog.send(codecs.decode(text, "unicode_escape").encode("latin-1"))

    def do_expect(self, arg: str) -> None:
        assert self.dialog is not None
        reply = self.dialog.reply()
        last = reply.splitlines()[-1].decode("utf-8", "replace") if reply else "(closed)"
        assert last.startswith(arg.strip()), f"expected {arg.strip()!r}, got {last!r}"

    def do_closed(self, _: str) -> None:
        assert self.dialog is not None
        assert self.dialog.closed(), "the server should have closed the connection"

    def outbox(self, count: int) -> list[Path]:
        deadline = time.monotonic() + (10 if count else 1.0)
        found: list[Path] = []
        while time.monotonic() < deadline:
            found = sorted(self.setup.outbox_dir.glob("*.eml")) if \
                self.setup.outbox_dir.exists() else []
            if count and len(found) >= count:
                break
            time.sleep(0.02)
        return found

    def do_delivered(self, arg: str) -> None:
        assert len(self.outbox(int(arg))) == int(arg)

    def envelope(self) -> dict[str, Any]:
        [eml] = self.outbox(1)
        return dict(json.loads(eml.with_suffix(".json").read_text()))

    def do_rcpts(self, arg: str) -> None:
        assert self.envelope()["rcpt_tos"] == arg.strip().split(",")

    def do_from(self, arg: str) -> None:
        assert self.envelope()["mail_from"] == arg.strip()

    def do_ses(self, arg: str) -> None:
        key, _, value = arg.strip().partition("=")
        envelope = self.envelope()
        want = None if value == "-" else value
        if key.startswith("tag:"):
            assert envelope["tags"].get(key[4:]) == want
        else:
            assert envelope[key] == want

    def _header_section(self) -> bytes:
        [eml] = self.outbox(1)
        return eml.read_bytes().split(b"\r\n\r\n", 1)[0]

    def do_header(self, arg: str) -> None:
        assert arg.strip().encode() in self._header_section().split(b"\r\n")

    def do_every_header(self, arg: str) -> None:
        found = self.outbox(1)
        assert found
        for eml in found:
            assert arg.strip().encode() in eml.read_bytes().split(b"\r\n\r\n", 1)[0].split(
                b"\r\n"), eml.name

    def do_noheader(self, arg: str) -> None:
        name = arg.strip().lower().encode() + b":"
        assert not [h for h in self._header_section().split(b"\r\n")
                    if h.lower().startswith(name)]

    def finish(self) -> None:
        if self.dialog is not None:
            self.dialog.close()
        self.ensure_started()
        with Dialog(self.setup.implicit_port, self.setup.certs.ca, implicit_tls=True) as d:
            assert d.greeting.startswith(b"220 ")
            assert d.cmd("NOOP").startswith(b"250 2.0.0")


@pytest.fixture(scope="session")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # This module's users: the default one, and one limited to some senders.
    from relay import users

    path = tmp_path_factory.mktemp("dialog-users") / "users.yaml"
    db = users.UserDB({}).with_user(users.User(USER, users.hash_password(PASSWORD)))
    db = db.with_user(users.User(RESTRICTED_USER, users.hash_password(RESTRICTED_PASSWORD),
                                 ("app@example.com", "@allowed.example")))
    db = db.with_user(users.User(RESTRICTED_SES_USER, users.hash_password(RESTRICTED_PASSWORD),
                                 ("app@example.com",), ses_headers="allow"))
    users.save(path, db)
    return path


@pytest.mark.parametrize("script", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_dialog(script: Path, setup: Setup, start_relay: Any) -> None:
    runner = Runner(setup, start_relay)
    for n, raw in enumerate(script.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            runner.step(line)
        except AssertionError as e:
            raise AssertionError(f"{script.name}:{n}: {line}\n{e}") from None
    runner.finish()
