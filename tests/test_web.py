"""The relay's HTTP listeners (metrics, SNS webhook) against hostile clients, over raw
sockets: header floods, slow trickles, too many connections, oversized bodies, and TLS
handshakes that never finish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from clients import implicit
from conftest import PASSWORD, USER, Setup, wait_until
from test_feedback_sns import LOOPBACK, TOPIC, make_signer

from relay import config
from relay.errors import ConfigError
from relay.feedback.sns import Verifier
from relay.web.sites import Site, Sites

SIGNER = make_signer("Test SNS CA")


def start(setup: Setup, start_relay: Any, *, webhook: bool = False, tls: bool = False,
          **web: Any) -> tuple[Any, int]:
    """The relay with a metrics listener (or the SNS webhook) on port 0, and the port
    it got."""
    if webhook:
        http: dict[str, Any] = {"address": "127.0.0.1", "port": 0}
        if tls:
            http.update(cert=setup.doc["tls"]["cert"], key=setup.doc["tls"]["key"])
        setup.doc["feedback"].update({"topic_arns": [TOPIC], "http": http})
    else:
        setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    if web:
        setup.doc["web"] = web
    setup.write()
    relay = start_relay(setup)
    return relay, setup.port("feedback" if webhook else "metrics")


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                 source_address=(source, 0))
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closing)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    return data


def readable(s: socket.socket) -> bool:
    return bool(select.select([s], [], [], 0)[0])


def request(port: int, raw: bytes, source: str = "127.0.0.1") -> bytes:
    with connect(port, source) as s:
        s.sendall(raw)
        return read_all(s)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def web_server(relay: Any, webhook: bool = False) -> Any:
    return relay.relay.sites.server("feedback" if webhook else "metrics")


# --- headers ---------------------------------------------------------------------------


def test_a_flood_of_header_lines_is_refused_and_the_connection_closed(
        setup: Setup, start_relay: Any) -> None:
    _, port = start(setup, start_relay)
    lines = 100_000
    sent = 0
    with connect(port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n")
        try:
            while sent < lines and not readable(s):
                s.sendall(b"".join(b"X-Flood-%06d: %s\r\n" % (sent + i, b"a" * 40)
                                   for i in range(1000)))
                sent += 1000
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server while we were still sending: what we want
        answer = read_all(s)
    assert status(answer) in (400, 431), answer[:200]  # and read_all saw it close


@pytest.mark.parametrize("line", [
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n",
])
def test_an_over_long_request_or_header_line_is_refused(setup: Setup, start_relay: Any,
                                                        line: bytes) -> None:
    _, port = start(setup, start_relay)
    assert status(request(port, line)) in (400, 414, 431)


def test_headers_trickled_slowly_are_cut_at_the_request_deadline(
        setup: Setup, start_relay: Any) -> None:
    relay, port = start(setup, start_relay, request_timeout="1s")
    sent, closed = 0, False
    with connect(port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n")
        # Each line well within any per-line timeout; 300 of them take 30 s.
        while sent < 300 and not closed:
            try:
                s.sendall(b"X-Slow-%03d: 1\r\n" % sent)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            if readable(s):
                closed = read_all(s) == b""
                break
            time.sleep(0.1)
    assert closed, f"the server was still reading after {sent} header lines"
    wait_until(lambda: web_server(relay).connections == 0)


def test_a_body_trickled_slowly_is_answered_408_at_the_deadline(
        setup: Setup, start_relay: Any) -> None:
    _, port = start(setup, start_relay, webhook=True, request_timeout="1s")
    with connect(port) as s:
        s.sendall(b"POST /sns HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(300):
            if readable(s):
                break
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(b"{")
            time.sleep(0.1)
        answer = read_all(s)
    assert status(answer) == 408, answer[:200]


def serve_once(raw: bytes, route: Any, timeout: float = 10.0) -> bytes:
    """One request to a site whose only route is GET /x, as a raw client sees it."""
    async def main() -> bytes:
        sites = Sites()
        await sites.start([Site("test", "127.0.0.1", 0,
                                config.WebConfig(request_timeout=timeout),
                                routes=lambda server: server.add_route("GET", "/x", route))])
        port = sites.port("test")
        assert port is not None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            answer = await asyncio.wait_for(reader.read(), 30)  # until the server closes
            writer.close()
            return answer
        finally:
            await sites.stop()

    return asyncio.run(main())


def test_a_handler_still_working_at_the_deadline_is_answered_503() -> None:
    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response(text="too late")

    answer = serve_once(b"GET /x HTTP/1.1\r\nHost: relay.test\r\n\r\n", slow, timeout=0.5)
    assert status(answer) == 503 and b"too late" not in answer


def test_a_failing_route_is_answered_500_and_logged_without_a_traceback(
        logs: list[dict[str, Any]]) -> None:
    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("database is locked")

    answer = serve_once(b"GET /x HTTP/1.1\r\nHost: relay.test\r\n\r\n", broken)
    assert status(answer) == 500 and b"database" not in answer
    [event] = [e for e in logs if e.get("event") == "http_handler_failed"]
    assert event["error"] == "RuntimeError: database is locked"


def test_answers_close_the_connection_one_request_each() -> None:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    two = b"GET /x HTTP/1.1\r\nHost: relay.test\r\n\r\n" * 2
    answer = serve_once(two, ok)
    assert answer.count(b"HTTP/1.1 200") == 1 and b"Connection: close" in answer


def test_web_limits_are_read_from_the_configuration(tmp_path: Any) -> None:
    base = {"hostname": "relay.test", "delivery": {"transport": "outbox"},
            "listeners": [{"name": "l", "address": "127.0.0.1", "port": 2525,
                           "tls": "none", "auth": "none",
                           "trusted_networks": ["127.0.0.1/32"]}]}
    cfg = config.parse({**base, "web": {"request_timeout": "30s", "max_connections": 10,
                                        "max_connections_per_ip": 2, "max_headers": 50,
                                        "max_header_size": "16KiB"}},
                       base=tmp_path, environ={})
    assert cfg.web == config.WebConfig(request_timeout=30.0, max_connections=10,
                                       max_connections_per_ip=2, max_headers=50,
                                       max_header_size=16 * 1024)
    assert config.parse(base, base=tmp_path, environ={}).web == config.WebConfig()
    with pytest.raises(ConfigError) as e:
        config.parse({**base, "web": {"max_connections": 0, "colour": 1}}, base=tmp_path,
                     environ={})
    assert "web.max_connections: must be at least 1" in e.value.problems
    assert "web.colour: unknown key" in e.value.problems


# --- bodies ------------------------------------------------------------------------------


def test_a_body_larger_than_an_sns_post_is_answered_413(setup: Setup,
                                                       start_relay: Any) -> None:
    _, port = start(setup, start_relay, webhook=True)
    answer = request(port, b"POST /sns HTTP/1.1\r\nHost: relay.test\r\n"
                           b"Content-Length: 300000\r\n\r\n")
    assert status(answer) == 413


def test_a_chunked_body_larger_than_an_sns_post_is_answered_413(setup: Setup,
                                                               start_relay: Any) -> None:
    _, port = start(setup, start_relay, webhook=True)
    with connect(port) as s:
        s.sendall(b"POST /sns HTTP/1.1\r\nHost: relay.test\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"{" * 64 * 1024)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(8):  # 512 KiB
                if readable(s):
                    break
                s.sendall(chunk)
        answer = read_all(s)
    assert status(answer) == 413, answer[:200]


def test_routes_keep_their_answers(setup: Setup, start_relay: Any) -> None:
    _, port = start(setup, start_relay, webhook=True)
    get = b"GET /sns HTTP/1.1\r\nHost: relay.test\r\n\r\n"
    assert status(request(port, get)) == 405
    assert status(request(port, get.replace(b"/sns", b"/other"))) == 404
    post = b"POST /sns HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 8\r\n\r\nnot json"
    assert status(request(port, post)) == 400


# --- connection caps ---------------------------------------------------------------------


@contextlib.contextmanager
def idle(port: int, source: str, count: int) -> Iterator[list[socket.socket]]:
    sockets = [connect(port, source) for _ in range(count)]
    try:
        yield sockets
    finally:
        for s in sockets:
            s.close()


def refused(port: int, source: str) -> bool:
    """The server closed a new connection without a word (we send a valid request)."""
    answer = request(port, b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n", source)
    return answer == b""


def healthy(port: int, source: str) -> bool:
    answer = request(port, b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n", source)
    return status(answer) == 200


def test_connections_are_capped_per_client_and_in_all(setup: Setup,
                                                      start_relay: Any) -> None:
    relay, port = start(setup, start_relay, max_connections_per_ip=2, max_connections=3)
    server = web_server(relay)
    with idle(port, "127.0.0.1", 2):
        wait_until(lambda: server.connections == 2)
        assert refused(port, "127.0.0.1")
        assert healthy(port, "127.0.0.2")  # another client still gets in
        with idle(port, "127.0.0.2", 1):
            wait_until(lambda: server.connections == 3)
            assert refused(port, "127.0.0.3")  # the total is full
    wait_until(lambda: server.connections == 0)
    assert healthy(port, "127.0.0.1")  # closed connections give their places back


def test_a_tls_handshake_that_never_comes_counts_and_is_cut_at_the_deadline(
        setup: Setup, start_relay: Any) -> None:
    relay, port = start(setup, start_relay, webhook=True, tls=True,
                        max_connections_per_ip=1, request_timeout="1s")
    server = web_server(relay, webhook=True)
    with connect(port) as silent:  # TCP only: no ClientHello
        wait_until(lambda: server.connections == 1)
        assert request(port, b"\x16\x03\x01", "127.0.0.1") == b""  # its place is taken
        context = ssl.create_default_context(cafile=str(setup.certs.ca))
        with context.wrap_socket(connect(port, "127.0.0.2"),
                                 server_hostname="localhost") as s:
            s.sendall(b"POST /sns HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 2\r\n\r\n{}")
            assert status(read_all(s)) == 400  # served over TLS: not an SNS message
        assert read_all(silent) == b""  # dropped at its deadline
    wait_until(lambda: server.connections == 0)


# --- certificate fetches and AUTH ------------------------------------------------------


class Hanging:
    """A loopback server that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            if select.select([self.listener], [], [], 0.05)[0]:
                self.accepted.append(self.listener.accept()[0])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.accepted:
            s.close()
        self.listener.close()


def test_certificate_hosts_that_hang_do_not_stall_auth(setup: Setup,
                                                       start_relay: Any) -> None:
    relay, port = start(setup, start_relay, webhook=True)
    verifier = Verifier([TOPIC], cert_host_pattern=LOOPBACK)
    verifier.fetcher.timeout = 60.0  # the hang ends when the test says so
    relay.relay.feedback._verifier = verifier
    hang = Hanging()
    answers: list[int] = []

    def post(n: int) -> None:
        url = f"https://127.0.0.1:{hang.port}/SimpleNotificationService-{n:04x}.pem"
        body = json.dumps(SIGNER.notification(cert_url=url, message_id=f"m-{n}")).encode()
        answers.append(status(request(port, b"POST /sns HTTP/1.1\r\nHost: relay.test\r\n"
                                            b"Content-Length: %d\r\n\r\n%s" % (len(body),
                                                                               body))))

    posts = [threading.Thread(target=post, args=(n,)) for n in range(8)]
    try:
        for t in posts:
            t.start()
        wait_until(lambda: len(hang.accepted) >= 4)  # fetches under way, hanging
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            assert s.noop()[0] == 250  # logged in while they hang
        assert answers == []  # ...and they still do
    finally:
        hang.close()
        for t in posts:
            t.join(30)
    assert answers == [503] * 8  # SNS will retry them
