"""The PROXY protocol behind a load balancer, and what comes before the greeting.

A PROXY header is believed only from a listener's proxy_from; from anyone else it is
refused (421, closed). On implicit TLS it comes before the handshake, as balancers send
it. Connections count against the limits from the TCP accept, handshake or not.
Loopback aliases stand for the parties: 127.0.0.1 is the balancer, 127.0.0.2 a client
that connects directly.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import struct
from typing import Any

import pytest
from clients import Dialog, tls_context
from conftest import PASSWORD, SENDER, USER, Setup, events, wait_until
from test_config import check

BALANCER = "127.0.0.1"
DIRECT = "127.0.0.2"  # not in proxy_from
CLIENT = "192.0.2.10"  # in trusted_networks, named by a header
RCPT = "rcpt@example.net"


def v1(client: str, port: int = 40000) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 25\r\n".encode()


def v2(client: str, port: int = 40000) -> bytes:
    addresses = (ipaddress.IPv4Address(client).packed + ipaddress.IPv4Address("127.0.0.1").packed
                 + struct.pack("!HH", port, 25))
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11])  # v2 PROXY, TCP over IPv4
            + struct.pack("!H", len(addresses)) + addresses)


def listener(setup: Setup, **settings: Any) -> str:
    """A listener behind the balancer on port 0; its name in ``setup.ports`` once started."""
    setup.doc["listeners"].append({"name": "behind-lb", "address": "127.0.0.1", "port": 0,
                                   "proxy_protocol": True, "proxy_from": [f"{BALANCER}/32"],
                                   **settings})
    setup.write()
    return "behind-lb"


def plain_listener(setup: Setup) -> str:
    return listener(setup, tls="none", auth="none",
                    trusted_networks=["192.0.2.0/24", f"{DIRECT}/32"])


def serve(setup: Setup, start_relay: Any, name: str) -> int:
    """Start the relay; the port its listener *name* got."""
    start_relay(setup)
    return setup.port(name)


def connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))


def read_to_close(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Everything the server sends until it hangs up (a reset counts as hanging up)."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return got


def over(sock: socket.socket | ssl.SSLSocket) -> Dialog:
    """A Dialog on a socket already connected (and past its PROXY header)."""
    d = Dialog.__new__(Dialog)
    d.sock, d.ca, d.buf = sock, None, b""
    d.greeting = d.reply()
    return d


def relay_one(d: Dialog) -> list[bytes]:
    replies = [d.cmd("EHLO client.test"), d.cmd(f"MAIL FROM:<{SENDER}>"),
               d.cmd(f"RCPT TO:<{RCPT}>"), d.cmd("DATA")]
    replies.append(d.cmd(f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: hi\r\n\r\nbody\r\n."))
    return replies


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_a_forged_header_from_a_non_balancer_gets_421_and_never_reaches_rcpt(
        setup: Setup, start_relay, logs, header) -> None:
    port = serve(setup, start_relay, plain_listener(setup))
    with connect(port, DIRECT) as s:
        # As a balancer would: the header and the dialog at once, without waiting.
        s.sendall(header(CLIENT) + f"EHLO x\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n"
                  .encode())
        got = read_to_close(s)
    assert b"421 4.7.0 " in got, got
    assert b"250" not in got, got
    assert [line for line in got.split(b"\r\n") if line and not line.startswith(b"220 ")] \
        == [b"421 4.7.0 PROXY header not accepted from your address"]
    refused = [e for e in events(logs, "rejected") if e["step"] == "CONNECT"]
    assert refused and refused[0]["peer"].startswith(f"{DIRECT}:")
    assert "proxy_from" in refused[0]["reason"]


def test_a_non_balancer_without_a_header_is_its_own_client(setup: Setup, start_relay) -> None:
    port = serve(setup, start_relay, plain_listener(setup))
    with over(connect(port, DIRECT)) as d:
        assert d.greeting.startswith(b"220 ")
        replies = relay_one(d)
    assert replies[2].startswith(b"250 "), replies  # DIRECT is in trusted_networks
    assert replies[-1].startswith(b"250 2.0.0"), replies


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_a_balancer_header_names_the_client_that_is_relayed_and_logged(
        setup: Setup, start_relay, logs, header) -> None:
    port = serve(setup, start_relay, plain_listener(setup))
    s = connect(port, BALANCER)
    s.sendall(header(CLIENT, 40001))
    with over(s) as d:
        assert d.greeting.startswith(b"220 ")
        replies = relay_one(d)
    assert replies[2].startswith(b"250 "), replies
    assert replies[-1].startswith(b"250 2.0.0"), replies
    wait_until(lambda: len(list(setup.outbox_dir.glob("*.eml"))) == 1)
    received = events(logs, "received")
    assert received[0]["peer"] == f"{CLIENT}:40001"
    assert received[0]["proxy"].startswith(f"{BALANCER}:")


def test_a_from_added_behind_a_balancer_is_logged_with_the_balancer(
        setup: Setup, start_relay, logs) -> None:
    port = serve(setup, start_relay, plain_listener(setup))
    s = connect(port, BALANCER)
    s.sendall(v1(CLIENT, 40004))
    with over(s) as d:
        for command in ("EHLO client.test", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>",
                        "DATA"):
            d.cmd(command)
        assert d.cmd(f"To: {RCPT}\r\nSubject: no from\r\n\r\nbody\r\n.").startswith(
            b"250 2.0.0")
    [added] = events(logs, "from_added")
    assert added["peer"] == f"{CLIENT}:40004"
    assert added["proxy"].startswith(f"{BALANCER}:")


def test_a_balancer_client_outside_trusted_networks_is_not_relayed(setup: Setup,
                                                                   start_relay) -> None:
    port = serve(setup, start_relay, plain_listener(setup))
    s = connect(port, BALANCER)
    s.sendall(v1("198.51.100.7"))
    with over(s) as d:
        d.cmd("EHLO client.test")
        assert d.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"530 5.7.0")


def test_a_balancer_without_a_header_is_closed_without_a_word(setup: Setup, start_relay,
                                                              logs) -> None:
    port = serve(setup, start_relay, plain_listener(setup))
    with connect(port, BALANCER) as s:
        s.sendall(b"EHLO client.test\r\n")
        assert read_to_close(s) == b""
    assert events(logs, "proxy_header_refused")


def test_starttls_behind_a_balancer_keeps_the_client_it_named(setup: Setup, start_relay,
                                                              logs) -> None:
    port = serve(setup, start_relay, listener(setup, tls="starttls", auth="required"))
    s = connect(port, BALANCER)
    s.sendall(v1(CLIENT, 40003))
    with over(s) as d:
        d.ca = setup.certs.ca
        d.cmd("EHLO client.test")
        assert d.starttls().startswith(b"220 ")
        assert b"AUTH" in d.cmd("EHLO client.test")
        assert d.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith(b"235 ")
    assert events(logs, "auth_ok")[0]["peer"] == f"{CLIENT}:40003"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def via_balancer(port: int, client: str) -> Dialog:
    s = connect(port, BALANCER)
    s.sendall(v1(client))
    return over(s)


def test_the_per_client_cap_counts_the_clients_a_balancer_names(setup: Setup,
                                                                start_relay) -> None:
    setup.doc["limits"] = {"max_connections_per_ip": 2}
    port = serve(setup, start_relay, plain_listener(setup))
    first = [via_balancer(port, CLIENT) for _ in range(2)]
    try:
        assert all(d.greeting.startswith(b"220 ") for d in first)
        with via_balancer(port, CLIENT) as third:
            assert third.greeting.startswith(b"421 4.7.0")
        # The balancer's own address is not one client: others still get in through it.
        with via_balancer(port, "192.0.2.11") as other:
            assert other.greeting.startswith(b"220 ")
    finally:
        for d in first:
            d.close()


def test_a_lockout_falls_on_the_client_a_balancer_names(setup: Setup, start_relay) -> None:
    setup.doc["limits"] = {"max_auth_failures": 2}
    port = serve(setup, start_relay, listener(setup, tls="implicit", auth="required"))

    def session(client: str) -> Dialog:
        raw = connect(port, BALANCER)
        raw.sendall(v2(client))
        return over(tls_context(setup.certs.ca).wrap_socket(raw, server_hostname="localhost"))

    with session(CLIENT) as d:
        d.cmd("EHLO client.test")
        for i in range(2):
            d.cmd(f"AUTH PLAIN {plain(USER, f'guess-{i}')}")
    with session(CLIENT) as d:  # the name is locked from the client the header named...
        d.cmd("EHLO client.test")
        assert d.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith(b"421 4.7.0")
    with session("192.0.2.11") as d:  # ...not from the balancer's other clients
        assert d.greeting.startswith(b"220 ")
        d.cmd("EHLO client.test")
        assert d.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith(b"235 ")


def test_a_balancers_own_connection_v2_local_is_its_own_client(setup: Setup,
                                                               start_relay) -> None:
    port = serve(setup, start_relay, plain_listener(setup))
    s = connect(port, BALANCER)
    s.sendall(b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + struct.pack("!H", 0))
    with over(s) as d:  # a health check: LOCAL, no addresses
        assert d.greeting.startswith(b"220 ")
        d.cmd("EHLO lb.test")
        assert d.cmd(f"MAIL FROM:<{SENDER}>").startswith(b"530 ")  # 127.0.0.1: not trusted


# -- implicit TLS: the header comes before the handshake


def test_implicit_tls_behind_a_balancer_takes_the_header_before_the_handshake(
        setup: Setup, start_relay, logs) -> None:
    port = serve(setup, start_relay, listener(setup, tls="implicit", auth="required"))
    raw = connect(port, BALANCER)
    raw.sendall(v2(CLIENT, 40002))
    with over(tls_context(setup.certs.ca).wrap_socket(raw, server_hostname="localhost")) as d:
        assert d.greeting.startswith(b"220 ")
        ehlo = d.cmd("EHLO client.test")
        assert b"AUTH" in ehlo
        assert b"STARTTLS" not in ehlo
        assert d.cmd(f"AUTH PLAIN {plain(USER, PASSWORD)}").startswith(b"235 ")
    ok = events(logs, "auth_ok")
    assert ok[0]["peer"] == f"{CLIENT}:40002"
    assert ok[0]["proxy"].startswith(f"{BALANCER}:")


def test_implicit_tls_refuses_a_forged_header_in_clear(setup: Setup, start_relay,
                                                       logs) -> None:
    port = serve(setup, start_relay, listener(setup, tls="implicit", auth="required"))
    with connect(port, DIRECT) as s:
        s.sendall(v1(CLIENT))
        assert read_to_close(s) == b"421 4.7.0 PROXY header not accepted from your address\r\n"


def test_implicit_tls_from_a_non_balancer_without_a_header_works(setup: Setup,
                                                                 start_relay) -> None:
    port = serve(setup, start_relay, listener(setup, tls="implicit", auth="required"))
    raw = connect(port, DIRECT)
    with over(tls_context(setup.certs.ca).wrap_socket(raw, server_hostname="localhost")) as d:
        assert d.greeting.startswith(b"220 ")
        assert b"AUTH" in d.cmd("EHLO client.test")


# -- connections stuck before the greeting count, and do not stay forever


def test_connections_stuck_in_the_tls_handshake_count_toward_the_per_client_cap(
        setup: Setup, start_relay, logs) -> None:
    setup.doc["limits"] = {"max_connections_per_ip": 3}
    setup.write()
    relay = start_relay(setup)
    stuck = [socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=10)
             for _ in range(3)]
    try:
        wait_until(lambda: relay.relay.connections.count == 3)
        with socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=10) as s:
            assert read_to_close(s) == b""  # closed at once, not kept for a handshake
        extra = socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=10)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_context(setup.certs.ca).wrap_socket(extra, server_hostname="localhost")
        extra.close()
        refused = [e for e in events(logs, "rejected") if e["step"] == "CONNECT"]
        assert refused and refused[0]["reply"].startswith("421 4.7.0 Too many connections")
    finally:
        for s in stuck:
            s.close()
    wait_until(lambda: relay.relay.connections.count == 0)
    with Dialog(setup.implicit_port, setup.certs.ca, implicit_tls=True) as d:
        assert d.greeting.startswith(b"220 ")


def test_connections_stuck_in_the_tls_handshake_count_toward_the_cap_in_all(
        setup: Setup, start_relay) -> None:
    setup.doc["limits"] = {"max_connections": 2}
    setup.write()
    relay = start_relay(setup)
    stuck = [connect(setup.implicit_port, BALANCER) for _ in range(2)]
    try:
        wait_until(lambda: relay.relay.connections.count == 2)
        with connect(setup.implicit_port, DIRECT) as s:
            assert read_to_close(s) == b""
    finally:
        for s in stuck:
            s.close()


def test_a_client_that_never_starts_tls_is_hung_up_on(setup: Setup, start_relay,
                                                      logs) -> None:
    setup.doc["limits"] = {"idle_timeout": "1s"}
    setup.write()
    relay = start_relay(setup)
    with socket.create_connection(("127.0.0.1", setup.implicit_port), timeout=10) as s:
        wait_until(lambda: relay.relay.connections.count == 1)
        read_to_close(s)  # returns: the server hung up (a socket timeout would raise)
    wait_until(lambda: relay.relay.connections.count == 0)


def test_a_balancer_that_sends_no_header_is_hung_up_on(setup: Setup, start_relay) -> None:
    setup.doc["limits"] = {"idle_timeout": "1s"}
    name = plain_listener(setup)
    relay = start_relay(setup)
    port = setup.port(name)
    with connect(port, BALANCER) as s:
        assert b"220" not in read_to_close(s)  # (the idle timer may say why: 421 4.4.2)
    wait_until(lambda: relay.relay.connections.count == 0)


# -- configuration


def _listener_doc(**settings: Any) -> dict[str, Any]:
    return {"hostname": "relay.test", "delivery": {"transport": "outbox"},
            "listeners": [{"name": "l", "address": "127.0.0.1", "port": 2525, "tls": "none",
                           "auth": "none", "trusted_networks": ["10.0.0.0/8"], **settings}]}


@pytest.mark.parametrize(("settings", "problem"), [
    ({"proxy_protocol": True}, "listeners[0].proxy_from: required with proxy_protocol: true"),
    ({"proxy_protocol": True, "proxy_from": []},
     "listeners[0].proxy_from: required with proxy_protocol: true"),
    ({"proxy_from": ["10.0.0.0/8"]}, "listeners[0].proxy_from: only with proxy_protocol"),
    ({"proxy_protocol": True, "proxy_from": ["10.0.0.300/8"]}, "listeners[0].proxy_from[0]: "),
], ids=["missing", "empty", "without-proxy_protocol", "bad-cidr"])
def test_check_config_refuses_proxy_settings_that_would_trust_anyone(
        tmp_path, settings: dict[str, Any], problem: str) -> None:
    import yaml

    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(_listener_doc(**settings)))
    result = check(path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert problem in result.stdout + result.stderr
