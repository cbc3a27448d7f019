"""Operating the relay process: reload, shutdown, systemd notifications, abuse limits."""

from __future__ import annotations

import base64
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme
from clients import Dialog, implicit, starttls
from conftest import PASSWORD, SENDER, USER, NotifySocket, Setup, wait_until
from reloadkit import reload
from test_cli import run

MESSAGE = (b"From: sender@example.com\r\nSubject: ops\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000"
           b"\r\nMessage-ID: <ops@example.com>\r\n\r\nbody\r\n")


def creds(user: str = USER, password: str = PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def logged_in(setup: Setup) -> Dialog:
    d = Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True)
    d.cmd("EHLO client.test")
    assert d.cmd(f"AUTH PLAIN {creds()}").startswith(b"235")
    return d


def test_sighup_reloads_users_without_dropping_a_session(setup: Setup, tmp_path: Path,
                                                         start_process) -> None:
    users_file = tmp_path / "users.yaml"
    users_file.write_bytes(Path(setup.doc["users_file"]).read_bytes())
    setup.doc["users_file"] = str(users_file)
    setup.write()
    relay = start_process(setup)
    with logged_in(setup) as d:
        assert d.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"250")
        assert d.cmd("RCPT TO:<a@example.net>").startswith(b"250")
        assert run("user", "add", "newcomer", "--config", str(setup.path),
                   stdin="newcomer-password\n").returncode == 0
        assert reload(relay, "reloaded")["users"] == 2
        assert d.cmd("DATA").startswith(b"354")
        assert d.cmd(MESSAGE + b".").startswith(b"250 2.0.0 Ok: queued as")
    with implicit(setup.implicit_port, setup.certs.ca, "newcomer", "newcomer-password") as s:
        assert s.noop()[0] == 250


def test_an_invalid_config_on_reload_is_refused_and_the_old_one_stays(
        setup: Setup, start_process) -> None:
    relay = start_process(setup)
    good = setup.path.read_text()
    setup.path.write_text("hostname: [broken\n")
    refused = reload(relay, "reload_refused")
    assert "not valid YAML" in refused["problems"][0]
    setup.path.write_text(good)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        assert s.sendmail(SENDER, ["a@example.net"], MESSAGE) == {}
    assert relay.proc.poll() is None


def test_sighup_picks_up_a_renewed_certificate(setup: Setup, tmp_path: Path,
                                               start_process) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(setup.certs.cert.read_bytes())
    key.write_bytes(setup.certs.key.read_bytes())
    setup.doc["tls"] = {"cert": str(cert), "key": str(key)}
    setup.write()
    relay = start_process(setup)
    renewed_ca = trustme.CA()
    issued = renewed_ca.issue_cert("localhost", "127.0.0.1")
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    reload(relay, "reloaded")
    ctx = ssl.create_default_context()
    renewed_ca.configure_trust(ctx)
    with socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.recv(100).startswith(b"220 ")
    with pytest.raises(ssl.SSLCertVerificationError):
        implicit(setup.implicit_port, setup.certs.ca)  # the old CA no longer matches


@pytest.mark.parametrize("process", ["shared", "separate"])
def test_sigterm_lets_an_upload_finish_then_exits_0(setup: Setup, start_process,
                                                    process: str) -> None:
    """(separate: the SIGTERM may reach the delivery process while it is still starting,
    before its handler is in place; that is still a clean stop.)"""
    setup.doc["delivery"]["process"] = process
    setup.write()
    relay = start_process(setup)
    with logged_in(setup) as d:
        d.cmd(f"MAIL FROM:<{SENDER}>")
        d.cmd("RCPT TO:<a@example.net>")
        assert d.cmd("DATA").startswith(b"354")
        d.send(MESSAGE[:40])
        relay.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # no new sessions while stopping
            socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=5)
        d.send(MESSAGE[40:])
        assert d.cmd(b".").startswith(b"250 2.0.0 Ok: queued as")
    assert relay.proc.wait(30) == 0
    assert len(list((setup.queue_dir / "active").iterdir())) + \
        len(list(setup.outbox_dir.glob("*.eml"))) == 1


def test_systemd_is_told_ready_and_stopping(setup: Setup, start_process,
                                            notify_socket: NotifySocket) -> None:
    relay = start_process(setup)
    notify_socket.wait_for(b"READY=1")
    # READY comes after the listeners are bound: a connection works now.
    with implicit(setup.implicit_port, setup.certs.ca) as s:
        assert s.noop()[0] == 250
    notify_socket.wait_for(b"WATCHDOG=1")
    relay.proc.send_signal(signal.SIGTERM)
    notify_socket.wait_for(b"STOPPING=1")
    assert relay.proc.wait(30) == 0


def test_connections_over_the_per_client_limit_get_421(setup: Setup, start_relay) -> None:
    setup.doc["limits"] = {"max_connections_per_ip": 3}
    setup.write()
    start_relay(setup)
    open_ = [Dialog(setup.starttls_port) for _ in range(3)]
    try:
        extra = Dialog(setup.starttls_port)
        assert extra.greeting.startswith(b"421 4.7.0")
        assert extra.closed()
        extra.close()
    finally:
        for d in open_:
            d.close()

    def greeted() -> bool:
        with Dialog(setup.starttls_port) as d:
            return d.greeting.startswith(b"220")

    wait_until(greeted, timeout=5)  # the slots come back when clients leave


def test_auth_brute_force_is_slowed_then_locked_out(setup: Setup, start_relay, logs) -> None:
    setup.doc["limits"] = {"max_auth_failures": 3}
    setup.write()
    start_relay(setup)
    d = Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True)
    d.cmd("EHLO client.test")
    replies = [d.cmd(f"AUTH PLAIN {creds(USER, f'guess-{i}')}") for i in range(3)]
    assert replies[0].startswith(b"535 5.7.8") and replies[1].startswith(b"535 5.7.8")
    assert replies[2].startswith(b"421 4.7.0")
    assert d.closed()
    d.close()
    # The name stays locked out from this address, even with the right password (the
    # address itself only after four times as many failures, see test_auth_limits.py).
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as again:
        again.cmd("EHLO client.test")
        assert again.cmd(f"AUTH PLAIN {creds(USER, PASSWORD)}").startswith(b"421 4.7.0")
    assert [e["event"] for e in logs if e["event"].startswith("auth_")] == [
        "auth_failed", "auth_failed", "auth_failed", "auth_locked", "auth_locked"]


def test_a_trickling_upload_is_cut_off(setup: Setup, start_relay) -> None:
    setup.doc["limits"] = {"data_timeout": "1s", "min_data_rate": 100000}
    setup.write()
    start_relay(setup)
    with logged_in(setup) as d:
        d.cmd(f"MAIL FROM:<{SENDER}>")
        d.cmd("RCPT TO:<a@example.net>")
        d.cmd("DATA")
        for _ in range(6):
            d.send(b"slow line\r\n")
            time.sleep(0.3)
        assert d.reply().startswith(b"421 4.4.2")
        assert d.closed()


def test_starttls_client_counts_once(setup: Setup, start_relay) -> None:
    setup.doc["limits"] = {"max_connections_per_ip": 1}
    setup.write()
    relay = start_relay(setup)
    with starttls(setup.starttls_port, setup.certs.ca, USER, PASSWORD) as s:
        assert s.noop()[0] == 250
    wait_until(lambda: relay.relay.connections.count == 0, timeout=5)
    with smtplib.SMTP("127.0.0.1", setup.starttls_port, timeout=10) as s:
        assert s.noop()[0] == 250


def test_the_fail2ban_filter_matches_auth_failure_lines(setup: Setup, start_process) -> None:
    import re

    from conftest import REPO

    text = (REPO / "config" / "fail2ban-filter.conf").read_text()
    block = text.split("failregex =", 1)[1].split("ignoreregex", 1)[0]
    patterns = [re.compile(line.strip().replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)"))
                for line in block.splitlines() if line.strip()]
    setup.doc["limits"] = {"max_auth_failures": 2}
    setup.write()
    relay = start_process(setup)
    with implicit(setup.implicit_port, setup.certs.ca) as s, \
            pytest.raises(smtplib.SMTPException):
        s.login(USER, "wrong")  # smtplib tries PLAIN, then LOGIN: two failures
    relay.wait_event("auth_locked")
    lines = [line for line in relay.log_path.read_text().splitlines()
             if '"auth_failed"' in line or '"auth_locked"' in line]
    assert lines
    for line in lines:
        hosts = {m.group("host") for p in patterns if (m := p.search(line))}
        assert hosts == {"127.0.0.1"}, line


def test_behind_a_load_balancer_the_proxy_header_names_the_client(setup: Setup,
                                                                  start_relay) -> None:
    setup.doc["listeners"].append({"name": "behind-lb", "address": "127.0.0.1",
                                   "port": 0,
                                   "tls": "none", "auth": "none", "proxy_protocol": True,
                                   "proxy_from": ["127.0.0.1/32"],
                                   "trusted_networks": ["192.0.2.0/24"]})
    setup.write()
    start_relay(setup)
    port = setup.port("behind-lb")

    def session(client_ip: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"PROXY TCP4 {client_ip} 127.0.0.1 40000 25\r\n".encode())
            f = s.makefile("rb")
            assert f.readline().startswith(b"220 ")
            s.sendall(b"EHLO lb.test\r\n")
            while f.readline()[3:4] == b"-":
                pass
            s.sendall(f"MAIL FROM:<{SENDER}>\r\n".encode())
            reply = f.readline()
            f.close()
            return reply

    # Trusted networks are judged on the client the balancer names, not on the balancer.
    assert session("192.0.2.10").startswith(b"250 2.1.0")
    assert session("198.51.100.7").startswith(b"530 5.7.0")


def test_an_idle_session_is_told_and_closed_but_a_busy_one_is_not(setup: Setup,
                                                                   start_relay) -> None:
    setup.doc["limits"] = {"idle_timeout": "1s"}
    setup.write()
    start_relay(setup)
    with logged_in(setup) as busy, logged_in(setup) as idle:
        deadline = time.monotonic() + 2.5  # well past the timeout, for the busy one
        while time.monotonic() < deadline:
            assert busy.cmd("NOOP").startswith(b"250 2.0.0")
            time.sleep(0.25)
        assert idle.reply().startswith(b"421 4.4.2")
        assert idle.closed()
        assert busy.cmd("NOOP").startswith(b"250 2.0.0")


def test_a_slow_upload_that_keeps_sending_is_not_idle(setup: Setup, start_relay) -> None:
    # Past the idle timeout in all, but never silent for that long, and far above
    # min_data_rate: the message is taken.
    setup.doc["limits"] = {"idle_timeout": "1s"}
    setup.write()
    start_relay(setup)
    with logged_in(setup) as d:
        assert d.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"250")
        assert d.cmd("RCPT TO:<to@example.net>").startswith(b"250")
        assert d.cmd("DATA").startswith(b"354")
        d.send(b"Subject: slow\r\n\r\n")
        for i in range(10):  # 2.5 s in all, a line every 0.25 s
            time.sleep(0.25)
            d.send(b"line %d of a slow upload, %s\r\n" % (i, b"x" * 900) * 2)
        d.send(b".\r\n")
        assert d.reply().startswith(b"250 2.0.0")


def test_a_module_logger_follows_each_new_configuration() -> None:
    # Module loggers are bound once per configure() (relay/log.py): a reload that changes
    # the level or the stream must still take effect on the loggers already in use.
    import io
    import json as _json

    import structlog

    from relay import log

    logger = log.get("test")
    quiet, loud = io.StringIO(), io.StringIO()
    saved, bound = structlog.get_config(), log._LOGGERS_BOUND
    try:
        log.configure("json", "warning", stream=quiet)
        logger.info("hidden")
        logger.warning("shown", n=1)
        log.configure("json", "info", stream=loud)
        logger.info("now shown", n=2)
    finally:  # as it was, for the tests after this one
        structlog.configure(**saved)
        log._LOGGERS_BOUND = bound
        for each in log._LOGGERS:
            each.rebind()
    assert [_json.loads(line)["event"] for line in quiet.getvalue().splitlines()] == ["shown"]
    assert [_json.loads(line)["n"] for line in loud.getvalue().splitlines()] == [2]


def test_the_mail_command_length_limit_is_per_session_not_grown_by_every_ehlo(
        setup: Setup, start_relay) -> None:
    # aiosmtpd keeps the per-command length limits on the class and raises MAIL's for each
    # EHLO (SIZE and 8BITMIME parameters): shared by every session, it grew without bound.
    start_relay(setup)
    for _ in range(15):
        logged_in(setup).close()
    with logged_in(setup) as d:
        too_long = f"MAIL FROM:<{'a' * 600}@example.com>"  # 512 + 36 allowed after EHLO
        assert d.cmd(too_long).startswith(b"500 5.5.2")
