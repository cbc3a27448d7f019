"""Property-based tests of the parsers that face hostile input: no crash, no foreign
exception, and round trips where they apply."""

from __future__ import annotations

import asyncio
import base64
import string
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP
from clients import Dialog, implicit
from conftest import PASSWORD, SENDER, USER, Setup, wait_until
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from relay import config
from relay.addresses import AddressError, normalize
from relay.errors import ConfigError
from relay.message import SINGLETONS, HeaderError, rewrite, split_fields
from relay.smtp.server import RelaySMTP

address_text = st.one_of(
    st.text(max_size=80),
    st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=30), st.text(max_size=30)),
    st.from_regex(r"[a-z0-9.+_-]{1,20}@[a-z0-9-]{1,15}\.[a-z]{2,6}", fullmatch=True),
)


@given(address_text)
def test_address_checks_either_normalize_or_refuse(text: str) -> None:
    try:
        result = normalize(text)
    except AddressError as e:
        assert e.reason
        return
    assert result.isascii()
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in result)
    assert normalize(result) == result  # idempotent


header_line = st.one_of(
    st.sampled_from([b"Subject: x", b"From: a@example.com", b"Bcc: b@example.com",
                     b"X-SES-CONFIGURATION-SET: set-1", b"X-SES-MESSAGE-TAGS: a=b, c=d",
                     b"Date: Sun, 22 Nov 2026 10:00:00 +0000", b"Message-ID: <x@y>",
                     b"  folded continuation", b"To: =?utf-8?q?J=C3=B6rg?= <j@example.com>"]),
    st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


@given(st.lists(header_line, max_size=12))
def test_header_rewriting_never_crashes_and_keeps_its_promises(lines: list[bytes]) -> None:
    block = b"".join(line + b"\r\n" for line in lines)
    try:
        out = rewrite(block, hostname="relay.test", now=0.0)
    except HeaderError as e:
        assert e.reply.startswith("554 5.6.0")
        return
    fields = split_fields(out.block)
    names = [name for name, _ in fields]
    assert "bcc" not in names and "x-ses-message-tags" not in names
    assert all(names.count(n) <= 1 for n in SINGLETONS)
    assert "date" in names and "message-id" in names
    assert out.block.endswith(b"\r\n") and b"\r\n\r\n" not in out.block


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
config_doc = st.dictionaries(
    st.sampled_from(["hostname", "listeners", "tls", "queue", "delivery", "limits", "policy",
                     "suppression", "metrics", "log", "users_file", "bogus"]),
    json_value, max_size=8)


@given(config_doc)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_the_config_loader_only_ever_answers_a_config_or_its_problems(doc: dict[str, object]
                                                                      ) -> None:
    try:
        cfg = config.parse(doc, base=Path("/nonexistent"), environ={})
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and ":" in p for p in e.problems)
        return
    assert cfg.hostname


def _session(setup: Setup, start_relay: Any) -> Dialog:
    """A TLS session with the relay, started once for all of a property test's examples
    (hypothesis calls the test many times with the same function-scoped fixtures)."""
    if not getattr(setup, "started", False):
        start_relay(setup)
        setup.started = True  # type: ignore[attr-defined]
    return Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True)


@given(st.binary(max_size=120))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_auth_blob_gets_an_auth_answer_and_the_session_goes_on(
        setup: Setup, start_relay, blob: bytes) -> None:
    with _session(setup, start_relay) as d:
        d.cmd("EHLO client.test")
        reply = d.cmd("AUTH PLAIN " + base64.b64encode(blob).decode())
        if reply.startswith(b"334 "):  # an empty blob asks for the credentials; abort
            reply = d.cmd("*")
        assert reply[:3] in (b"501", b"535"), reply
        assert d.cmd("NOOP").startswith(b"250 2.0.0")


def _to_data(d: Dialog) -> None:
    """Log in and give one recipient; the server's 354 to DATA is asserted."""
    d.cmd("EHLO client.test")
    creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert d.cmd(f"AUTH PLAIN {creds}").startswith(b"235")
    d.cmd(f"MAIL FROM:<{SENDER}>")
    d.cmd("RCPT TO:<a@example.net>")
    assert d.cmd("DATA").startswith(b"354")


@given(st.binary(max_size=300))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_data_gets_an_answer_and_never_a_second_message(
        setup: Setup, start_relay, data: bytes) -> None:
    # Data that ends the message itself (a "." line) makes what follows commands, as it
    # should; those examples test something else.
    assume(not (b"\r\n" + data).count(b"\r\n.\r\n"))
    with _session(setup, start_relay) as d:
        _to_data(d)
        d.send(data + b"\r\n.\r\n")
        reply = d.reply()
        assert reply[:3] in (b"250", b"552", b"554"), reply
        if reply[:3] != b"554" or b"Bare LF" not in reply:
            after = d.cmd("NOOP")  # no smuggled command ran: the next reply is NOOP's
            assert after.startswith(b"250 2.0.0 OK") or after.startswith(b"250 2.0.0"), after


body_line = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120),
    st.sampled_from([".", "..", ". ", ".x", "...", "", " .", "From here"]),
    st.builds(lambda t: "." + t, st.text(alphabet="ab.", max_size=10)),
)


@given(st.lists(body_line, max_size=60), st.integers(min_value=0, max_value=3))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_body_of_valid_lines_arrives_byte_for_byte(
        setup: Setup, start_relay, lines: list[str], filler_blocks: int) -> None:
    # Dot-stuffed by smtplib, unstuffed by the relay; bodies up to ~80 KB cross the sizes
    # at which transports and buffers read.
    filler = ("filler line of ordinary text, seventy-odd characters long, no dots\r\n"
              * 300).encode() * filler_blocks
    body = b"".join(line.encode() + b"\r\n" for line in lines) + filler
    if not getattr(setup, "started", False):
        start_relay(setup)
        setup.started = True  # type: ignore[attr-defined]
        setup.sent = 0  # type: ignore[attr-defined]
    setup.sent += 1  # type: ignore[attr-defined]
    subject = f"case-{setup.sent}".encode()  # type: ignore[attr-defined]
    message = b"From: " + SENDER.encode() + b"\r\nSubject: " + subject + b"\r\n\r\n" + body
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["to@example.net"], message)

    def delivered() -> bytes | None:
        for eml in setup.outbox_dir.glob("*.eml"):
            data = eml.read_bytes()
            if b"\r\nSubject: " + subject + b"\r\n" in b"\r\n" + data:
                return data
        return None

    wait_until(lambda: delivered() is not None)
    data = delivered()
    assert data is not None
    assert data.split(b"\r\n\r\n", 1)[1] == body


_atom = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-.",
                min_size=1, max_size=12)
_path_args = st.one_of(
    st.builds(lambda local, domain, tail: f"<{local}@{domain}>{tail}", _atom,
              st.from_regex(r"[a-z0-9-]{1,8}(\.[a-z0-9-]{1,8}){0,2}\.?", fullmatch=True),
              st.sampled_from(["", " ", " SIZE=100", "  BODY=8BITMIME ", " (c)", "x",
                               ' A="q"', " X=a\\b", "\tSIZE=1"])),
    st.text(max_size=40),
)


def _outcome(f: Any, *args: Any) -> object:
    """A result, or the type of what was raised (the email parser raises IndexError for
    some input, e.g. "<")."""
    try:
        return f(*args)
    except Exception as e:  # compared, not swallowed
        return type(e)


@given(_path_args)
@settings(max_examples=400, deadline=None)
def test_the_fast_address_reader_agrees_with_aiosmtpds_parser(arg: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        ours = RelaySMTP(object(), starttls_required=False, loop=loop)
        expected = _outcome(SMTP._getaddr, ours, arg)
        if expected in (IndexError, AttributeError):  # aiosmtpd's parser breaks ("<",
            expected = (None, None)  # "<a@[192.0.2.1>"); ours calls it malformed
        elif (isinstance(expected, tuple) and expected[0] and arg.lstrip().startswith("<")
              and ">" not in arg[:len(arg) - len(expected[1] or "")]):
            expected = (None, None)  # "<a@b.c" never closed: aiosmtpd reads on, ours refuses
        assert _outcome(ours._getaddr, arg) == expected
    finally:
        loop.close()


_IMMUTABLE = (type(None), bool, int, float, str, bytes, tuple, frozenset, type)
# Settings a session only reads; one object for every session of a listener.
_SHARED = {"event_handler", "loop", "_loop", "_handle_hooks", "_call_limit_base",
           "_auth_callback", "_authenticator", "tls_context", "_implicit_context"}


def test_a_spawned_session_is_set_up_like_one_aiosmtpd_builds() -> None:
    """listeners.start gives each connection a copy of one session (RelaySMTP.spawn)
    instead of running aiosmtpd's constructor: the copy must have the same attributes with
    the same values, and share nothing it could change with the session it came from."""
    import collections
    import types
    import weakref

    from relay.config import Limits, Listener
    from relay.smtp.handler import Handler
    from relay.smtp.listeners import _session

    loop = asyncio.new_event_loop()
    try:
        handler = Handler.__new__(Handler)  # the class is what aiosmtpd inspects
        for listener in (Listener("submission", "127.0.0.1", 0, "starttls", "required"),
                         Listener("smtps", "127.0.0.1", 0, "implicit", "optional", (), True)):
            def build(listener: Listener = listener) -> RelaySMTP:
                return _session(handler, "relay.test", None, 1000, Limits(), listener, loop)

            first, fresh = build(), build()
            copy = first.spawn()
            assert set(vars(copy)) == set(vars(fresh))
            for name, value in vars(fresh).items():
                ours, theirs = getattr(copy, name), getattr(first, name)
                if isinstance(value, _IMMUTABLE) or name in _SHARED:
                    if name != "started":
                        assert ours == value, name
                    continue
                assert ours is not theirs, name  # its own: stream, futures, method tables
                if name == "_smtp_methods":
                    assert ours.keys() == value.keys()
                    assert all(m.__self__ is copy for m in ours.values())
                elif name == "command_size_limits":  # the session's own (EHLO raises them)
                    assert ours == value == {"AUTH": SMTP.line_length_limit}
                elif name == "_auth_methods":
                    assert ours.keys() == value.keys()
                    assert all(a.method.__self__ is (copy if a.is_builtin else handler)
                               for a in ours.values())
                else:
                    assert type(ours) is type(value), name
                    assert isinstance(value, (asyncio.StreamReader, asyncio.Future, weakref.ref,
                                              collections.deque, types.MethodType)), name
            assert copy._stream_reader is not first._stream_reader
    finally:
        loop.close()


_FROM_LIKE = st.one_of(
    st.text(max_size=120),
    # Near the shortcut's shapes ("a@b.c", "<a@b.c>", "Name <a@b.c>"), with a special
    # character here and there.
    st.builds(lambda name, local, domain, bracket: (
        f"{name}<{local}@{domain}>" if bracket else f"{name}{local}@{domain}"),
        st.text(alphabet="Ab9 _-.\"", max_size=6),
        st.text(alphabet="ab9.+'`{}!(),;:\"\\ <>[]", min_size=1, max_size=6),
        st.from_regex(r"[a-z0-9-]{1,6}(\.[a-z0-9-]{1,6}){0,2}", fullmatch=True),
        st.booleans()),
).filter(lambda v: "=?" not in v)


@given(st.one_of(_FROM_LIKE, st.text(max_size=120)))
@example("<a(b@c.d>")
@example('x"y <a@b.c>')
@example("a.b <c@d.e>")
@example("a..b@c.d")
@example(".a@b.c")
@example("=?utf-8?q?ceo=40bank.example?=@allowed.example")
@example("a@b.c x@y.z")
@settings(max_examples=600, deadline=None)
def test_the_from_shortcut_reads_as_the_strict_parser(value: str) -> None:
    # relay.mailboxes reads the common From: shapes with one regex instead of the email
    # package's parser: both must give the same answer (or both refuse), and no other
    # exception than Ambiguous may come out of either.
    from relay import mailboxes

    def outcome(read: Any) -> object:
        try:
            return read("From", value)
        except mailboxes.Ambiguous:
            return "ambiguous"

    assert outcome(mailboxes.read) == outcome(mailboxes._parse)


_framing_piece = st.sampled_from([
    b"\r\n", b"\n", b"\r", b".", b"..", b"x", b"Subject: s", b"MAIL FROM:<ceo@example.com>",
    b"RCPT TO:<victim@example.net>", b"DATA", b"QUIT", b"x" * 1000])


@given(st.lists(_framing_piece, max_size=30))
@example([b"hello", b"\n", b".", b"\r\n", b"MAIL FROM:<ceo@example.com>"])  # <LF>.<CR><LF>
@example([b"x" * 1000, b"\n", b".", b"\r\n", b"DATA"])  # the same after an over-long line
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_with_normalized_line_ends_only_crlf_dot_crlf_ends_data(
        setup: Setup, start_relay, pieces: list[bytes]) -> None:
    # Line ends, dots and commands in any order, in normalize mode: the message ends at the
    # first CRLF.CRLF or the session ends; nothing in it is ever read as a command.
    data = b"".join(pieces)
    stream = b"\r\n" + data + b"\r\n.\r\n"  # DATA begins at the start of a line
    assume(stream.find(b"\r\n.\r\n") == len(stream) - 5)  # the message's own end is the first
    setup.doc.setdefault("limits", {})["line_endings"] = "normalize"
    setup.write()
    with _session(setup, start_relay) as d:
        _to_data(d)
        d.send(data + b"\r\n.\r\n")
        reply = d.reply()
        assert reply[:3] in (b"250", b"552", b"554"), reply
        if reply.startswith(b"554 5.6.0 Bare LF"):
            assert d.closed()
        else:
            assert d.cmd("NOOP").startswith(b"250 2.0.0"), (data, reply)
