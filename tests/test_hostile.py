"""Hostile clients at the TLS and connection level, with real sockets against the relay
(the command-level cases are scripted dialogs in tests/dialogs): old TLS versions,
client-initiated renegotiation, plaintext on the implicit-TLS port, a half-closed
connection, and claims of another client address on a trusted-network listener."""

from __future__ import annotations

import base64
import os
import select
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

import pytest
from clients import Dialog
from conftest import PASSWORD, USER, Setup, events, ses_relay_exe, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from peers.interop import need

OLD_VERSIONS = ["TLSv1", "TLSv1_1"]  # names: the members warn (deprecated) when read


def _old_tls_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS < 1.2 only at level 0
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def _client_can_speak(version: ssl.TLSVersion, setup: Setup) -> bool:
    """Whether this machine's OpenSSL can still do *version* at all (else the test below
    would pass for the wrong reason): a handshake with a local server that allows it."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.minimum_version = version
    server.load_cert_chain(setup.certs.cert, setup.certs.key)
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    done: list[str] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                done.append(str(s.version()))
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        with _old_tls_client(version).wrap_socket(b) as c:
            ok = c.version() is not None
    except (ssl.SSLError, OSError):
        ok = False
    t.join(5)
    return ok


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("name", OLD_VERSIONS, ids=["TLSv1.0", "TLSv1.1"])
def test_tls_before_1_2_refused(name: str, setup: Setup, start_relay: Any) -> None:
    """TLS 1.0 and 1.1 are refused on both listeners (RFC 8996); the relay goes on."""
    version = getattr(ssl.TLSVersion, name)
    assert _client_can_speak(version, setup), "this OpenSSL cannot test old TLS versions"
    start_relay(setup)
    with socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=10) as raw, \
            pytest.raises((ssl.SSLError, ConnectionResetError)):
        _old_tls_client(version).wrap_socket(raw)
    with Dialog(setup.starttls_port) as d:
        assert d.cmd("EHLO client.test").startswith(b"250")
        assert d.cmd("STARTTLS").startswith(b"220 2.0.0")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _old_tls_client(version).wrap_socket(d.sock)
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as d:
        assert d.cmd("NOOP").startswith(b"250 2.0.0")


def _read_until(proc: subprocess.Popen[bytes], marks: tuple[bytes, ...],
                timeout: float = 10) -> bytes:
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    while not any(m in out for m in marks) and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    return out


def test_client_renegotiation_refused(setup: Setup, start_relay: Any) -> None:
    """A client asking for a TLS 1.2 renegotiation (CVE-2011-1473: each one costs the
    server a handshake) is refused, as Postfix does, and the relay goes on."""
    start_relay(setup)
    proc = subprocess.Popen(
        [need("openssl"), "s_client", "-connect", f"127.0.0.1:{setup.implicit_port}",
         "-tls1_2", "-CAfile", str(setup.certs.ca)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert b"220 relay.test" in _read_until(proc, (b"220 relay.test",))
        assert proc.stdin is not None
        proc.stdin.write(b"R\n")  # s_client's command for a renegotiation
        proc.stdin.flush()
        out = _read_until(proc, (b"no renegotiation", b"alert"))
        assert b"no renegotiation" in out, out.decode("utf-8", "replace")
    finally:
        proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes its pipes
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as d:
        assert d.cmd("NOOP").startswith(b"250 2.0.0")


@pytest.mark.parametrize("first", [b"EHLO client.test\r\n", b"GET / HTTP/1.0\r\n\r\n"],
                         ids=["smtp", "http"])
def test_plaintext_on_implicit_tls_port(first: bytes, setup: Setup, start_relay: Any) -> None:
    """Plaintext on the implicit-TLS port gets no SMTP reply (it is no TLS handshake) and
    the connection ends; the relay goes on."""
    start_relay(setup)
    with socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=10) as s:
        s.sendall(first)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        assert not got.startswith((b"2", b"5")), got
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as d:
        assert d.cmd("NOOP").startswith(b"250 2.0.0")


def _plain_listener(setup: Setup, networks: list[str]) -> str:
    """A plaintext listener without AUTH, open to *networks* only; its name."""
    setup.doc["listeners"].append({"name": "internal", "address": "127.0.0.1", "port": 0,
                                   "tls": "none", "auth": "none",
                                   "trusted_networks": networks})
    setup.write()
    return "internal"


def test_half_close_after_final_dot(setup: Setup, start_relay: Any) -> None:
    """A client that shuts its sending side right after the final dot (netcat, scripts)
    still gets its 250 and the message is queued, as Postfix does."""
    name = _plain_listener(setup, ["127.0.0.1/32"])
    start_relay(setup)
    with Dialog(setup.port(name)) as d:
        for command, reply in [("EHLO client.test", b"250"),
                               ("MAIL FROM:<app@example.com>", b"250 2.1.0"),
                               ("RCPT TO:<rcpt@example.net>", b"250 2.1.5"),
                               ("DATA", b"354")]:
            assert d.cmd(command).startswith(reply)
        d.send(b"Subject: half-close\r\n\r\nhello\r\n.\r\n")
        d.sock.shutdown(socket.SHUT_WR)
        assert d.reply().startswith(b"250 2.0.0 Ok: queued as ")
    wait_until(lambda: len(list(setup.outbox_dir.glob("*.eml"))) == 1)


def test_claimed_client_address_not_believed(setup: Setup, start_relay: Any) -> None:
    """On a listener open to 10.0.0.0/8 without AUTH, a client from 127.0.0.1 that claims
    a 10.x address (a PROXY header on a listener without proxy_protocol, XCLIENT,
    XFORWARD) is still 127.0.0.1: no relaying (Postfix refuses XCLIENT from hosts not in
    smtpd_authorized_xclient_hosts)."""
    name = _plain_listener(setup, ["10.0.0.0/8"])
    start_relay(setup)
    with Dialog(setup.port(name)) as d:  # a PROXY header from a client: 421, and hang up
        assert d.cmd("PROXY TCP4 10.1.2.3 127.0.0.1 40000 25").startswith(b"421 4.7.0")
        assert d.closed()
    with Dialog(setup.port(name)) as d:
        assert d.cmd("EHLO client.test").startswith(b"250")
        assert d.cmd("PROXY TCP4 10.1.2.3 127.0.0.1 40000 25").startswith(b"500 5.5.2")
        assert d.cmd("XCLIENT ADDR=10.1.2.3 NAME=trusted.example").startswith(b"500 5.5.2")
        assert d.cmd("XFORWARD ADDR=10.1.2.3").startswith(b"500 5.5.2")
        assert d.cmd("MAIL FROM:<app@example.com>").startswith(b"530 5.7.0")
        creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        # No AUTH on an auth: none listener: a password does not open it either.
        assert not d.cmd(f"AUTH PLAIN {creds}").startswith(b"235")
        assert d.cmd("MAIL FROM:<app@example.com>").startswith(b"530 5.7.0")


_path_piece = st.sampled_from(
    ["<", ">", '"', "\\", "@", "[", "]", "(", ")", ",", ":", ";", "=?utf-8?q?x?=", "a",
     ".", " ", "\t", "é", "\udcff", "<>", "@@", "b.example", "%", "!", "192.0.2.1", "IPv6:"])


def test_no_path_is_our_trouble(setup: Setup, start_relay: Any,
                                logs: list[dict[str, Any]]) -> None:
    """Whatever follows MAIL FROM:, RCPT TO: or VRFY, the client's mistake is a 5xx (never a
    451, which a client retries forever) and no session error: the email parser that
    aiosmtpd reads paths with raised on some (an unclosed "[", a VRFY echo of invalid UTF-8)."""
    start_relay(setup)
    dialog: list[Dialog] = []
    used = [0]

    def session() -> Dialog:
        if not dialog or used[0] > 80:  # under the per-session command limits
            if dialog:
                dialog.pop().close()
            d = Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True)
            assert d.cmd("EHLO client.test").startswith(b"250")
            creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            assert d.cmd(f"AUTH PLAIN {creds}").startswith(b"235")
            dialog.append(d)
            used[0] = 0
        used[0] += 2
        return dialog[0]

    @given(st.sampled_from(["MAIL FROM:", "RCPT TO:", "VRFY "]),
           st.lists(_path_piece, min_size=1, max_size=8))
    @example("RCPT TO:", ["<", "a", "@", "[", "192.0.2.1", ">"])
    @example("VRFY ", ["@", "\udcff"])
    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    def check(command: str, pieces: list[str]) -> None:
        d = session()
        if command == "RCPT TO:":
            d.cmd("RSET")
            assert d.cmd("MAIL FROM:<app@example.com>").startswith(b"250")
        line = (command + "".join(pieces)).encode("utf-8", "surrogateescape")
        reply = d.cmd(line)
        assert reply[:1] in (b"2", b"5"), (line, reply)
        d.cmd("RSET")

    try:
        check()
    finally:
        for d in dialog:
            d.close()
    assert not events(logs, "session_error")


@pytest.mark.parametrize("process", ["shared", "separate"])
def test_unusable_queue_directory_is_a_clear_error(setup: Setup, tmp_path: Any,
                                                   process: str) -> None:
    """A queue directory that cannot be made (its parent is a file; as root no permission
    bits stop us): the relay exits non-zero with one line naming the path, no traceback,
    and is gone. (separate: the supervisor is the first to meet it.)"""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    setup.doc["queue"]["directory"] = str(blocker / "queue")
    setup.doc["delivery"]["process"] = process
    setup.write()
    proc = subprocess.run([ses_relay_exe(), "serve", "--config", str(setup.path)],
                          capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # 1 today: a mount not there yet may come back
    assert "Traceback" not in out, out
    assert str(blocker / "queue") in out, out


def test_a_command_line_trickled_forever_is_cut_off(setup: Setup, start_relay: Any) -> None:
    """Slowloris on the command channel: bytes of a line that never ends keep coming, yet
    only a whole command restarts the idle timer, so the session ends with 421 4.4.2."""
    setup.doc.setdefault("limits", {})["idle_timeout"] = "1s"
    setup.write()
    start_relay(setup)
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as d:
        d.send(b"NOOP ")
        got = b""
        d.sock.settimeout(0.1)
        for _ in range(100):  # 10 s at most, ten times the idle timeout
            try:
                d.send(b"x")
                chunk = d.sock.recv(4096)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                break
            got += chunk
            if not chunk or b"\r\n" in got:
                break
        assert got.startswith(b"421 4.4.2"), got


def test_ehlo_advertises_enhanced_status_codes(setup: Setup, start_relay: Any) -> None:
    """Every reply carries an enhanced status code, so EHLO says ENHANCEDSTATUSCODES
    (RFC 2034 section 3; Postfix does), before TLS and after; PIPELINING and CHUNKING,
    not implemented, are not offered."""
    import smtplib

    from clients import implicit

    start_relay(setup)
    with smtplib.SMTP("127.0.0.1", setup.starttls_port, local_hostname="client.test",
                      timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("enhancedstatuscodes")
    with implicit(setup.implicit_port, setup.certs.ca) as s:
        assert s.has_extn("enhancedstatuscodes")
        assert not s.has_extn("pipelining") and not s.has_extn("chunking")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_key_not_matching_the_certificate_is_a_configuration_error(
        command: str, setup: Setup, tmp_path: Any) -> None:
    """A key that does not belong to the certificate (a renewal half done): check-config
    said "ok", serve died with a traceback and exit 1, so systemd restarted it in a loop.
    A configuration problem: exit 2 naming the file, as for a missing one."""
    import trustme

    other = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other))
    setup.doc["tls"]["key"] = str(other)
    setup.write()
    proc = subprocess.run([ses_relay_exe(), command, "--config", str(setup.path)],
                          capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and str(other) in out, out


def _login(d: Dialog) -> None:
    assert d.cmd("EHLO client.test").startswith(b"250")
    creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert d.cmd(f"AUTH PLAIN {creds}").startswith(b"235 2.7.0")


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
