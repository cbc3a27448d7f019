"""The SendEmail HTTP/1.1 client against a scripted server on loopback: each answer is
written as given (framing, splits, pauses, hang-ups), and what the server received is
kept to compare."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Certs

from relay.transports.errors import classify
from relay.transports.http1 import HTTPError, Pool
from relay.transports.sesv2http import SendEmailClient

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n" \
     b'{"MessageId":"m-1"}'

# An answer script: what to write back for the n-th request on a connection, as parts
# (written with a pause between them), or None to hang up without a word. HANG_UP as a
# part closes the connection there.
Script = Callable[[int], list[bytes] | None]
HANG_UP = b"<hang up>"
RESET = b"<reset>"  # hang up with a TCP reset, not an orderly close


class Server:
    """Reads requests (head + Content-Length body) and answers each with the script."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None,
                 pause: float = 0.0, hold: asyncio.Event | None = None) -> None:
        self.script = script
        # Read nothing until it is set; the receive buffer is then small, so that the
        # kernel cannot take a large body for the server however it is tuned.
        self.hold = hold
        self.tls = tls
        self.pause = pause
        self.connections = 0
        self.closed = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        listening = socket.socket()
        if self.hold is not None:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listening.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._serve, sock=listening, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        if self.hold is not None:
            await self.hold.wait()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET "):  # the SDK's calls at a relay's start: not here
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
                    await writer.drain()
                    continue
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                parts = self.script(n)
                n += 1
                if parts is None:
                    return
                for i, part in enumerate(parts):
                    if part is HANG_UP:
                        return
                    if part is RESET:
                        raw = writer.get_extra_info("socket")
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
                        writer.transport.abort()
                        return
                    if i and self.pause:
                        await asyncio.sleep(self.pause)
                    writer.write(part)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            self.closed += 1


def pool(port: int, scheme: str = "http", **kw: Any) -> Pool:
    options: dict[str, Any] = {"ssl_context": None, "size": 4, "connect_timeout": 2,
                               "read_timeout": 2, "user_agent": "ses-relay/test"}
    options.update(kw)
    return Pool(f"{scheme}://127.0.0.1:{port}/v2/email/outbound-emails", **options)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def until(condition: Callable[[], object]) -> None:
    """Wait for *condition* (run()'s bound ends a wait that never comes true)."""
    while not condition():
        await asyncio.sleep(0.01)


def test_a_post_is_sent_as_given_and_the_connection_is_kept() -> None:
    async def go() -> Server:
        async with Server(lambda n: [OK]) as server:
            client = pool(server.port)
            for i in range(3):
                response = await client.post(b'{"n":%d}' % i, {"X-Amz-Date": "20261122T000000Z"})
                assert (response.status, response.body) == (200, b'{"MessageId":"m-1"}')
                assert response.headers["content-type"] == "application/json"
            client.close()
            return server

    server = run(go())
    assert server.connections == 1
    head, body = server.requests[2]
    assert body == b'{"n":2}'
    assert head == (f"POST /v2/email/outbound-emails HTTP/1.1\r\nHost: 127.0.0.1:{server.port}"
                    "\r\nUser-Agent: ses-relay/test\r\nX-Amz-Date: 20261122T000000Z\r\n"
                    "Content-Length: 7\r\n\r\n").encode()


@pytest.mark.parametrize("answer", [
    # chunked, with an extension and a trailer
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"7;x=y\r\n{\"Messa\r\nC\r\ngeId\":\"m-1\"}\r\n0\r\nX-Trailer: 1\r\n\r\n",
    # chunked, no trailer
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"13\r\n{\"MessageId\":\"m-1\"}\r\n0\r\n\r\n",
    # an interim 100 Continue first; a folded header line
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 19\r\n"
    b"\r\n{\"MessageId\":\"m-1\"}",
])
def test_answers_framed_any_legal_way_arrive_whole_even_a_byte_at_a_time(answer: bytes) -> None:
    async def go() -> tuple[int, bytes, str | None]:
        async with Server(lambda n: [answer[i:i + 1] for i in range(len(answer))]) as server:
            client = pool(server.port)
            first = await client.post(b"{}", {})
            second = await client.post(b"{}", {})  # the framing left the connection clean
            client.close()
            assert first == second
            return server.connections, first.body, first.headers.get("x-long")

    connections, body, folded = run(go())
    assert (connections, body) == (1, b'{"MessageId":"m-1"}')
    assert folded == ("a b" if b"X-Long" in answer else None)


def test_a_204_has_no_body_and_leaves_the_connection_ready() -> None:
    async def go() -> tuple[int, list[int]]:
        answers = [b"HTTP/1.1 204 No Content\r\n\r\n", OK]
        async with Server(lambda n: [answers[n % 2]]) as server:
            client = pool(server.port)
            statuses = [(await client.post(b"{}", {})).status for _ in range(2)]
            client.close()
            return server.connections, statuses

    assert run(go()) == (1, [204, 200])


def test_a_large_body_waits_for_the_socket_instead_of_piling_up_in_memory() -> None:
    body = b"x" * (12 * 1024 * 1024)

    async def go() -> int:
        server_reads = asyncio.Event()
        async with Server(lambda n: [OK], hold=server_reads) as server:
            client = pool(server.port, read_timeout=5)
            made: list[Any] = []
            connect = client._connection

            async def keep() -> Any:
                made.append(await connect())
                return made[-1]

            client._connection = keep  # type: ignore[method-assign]
            send = asyncio.create_task(client.post(body, {}))
            await until(lambda: made and made[0]._writable is not None)  # the socket is full
            buffered = made[0]._transport.get_write_buffer_size()
            server_reads.set()
            assert (await send).status == 200
            client.close()
            return int(buffered)

    # What the client holds for the socket: a slice or two, not the 12 MB.
    assert run(go()) <= 1024 * 1024


def test_an_answer_to_the_end_of_the_connection_and_connection_close_are_not_reused() -> None:
    to_eof = b"HTTP/1.0 200 OK\r\n\r\nuntil EOF"
    close = b"HTTP/1.1 503 Slow Down\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"

    async def go() -> tuple[int, list[tuple[int, bytes]]]:
        async with Server(lambda n: [to_eof, HANG_UP]) as eof_server, \
                Server(lambda n: [close]) as close_server:
            got = []
            for port in (eof_server.port, close_server.port):
                client = pool(port)
                for _ in range(2):
                    response = await client.post(b"{}", {})
                    got.append((response.status, response.body))
                client.close()
            return eof_server.connections + close_server.connections, got

    connections, got = run(go())
    assert got == [(200, b"until EOF")] * 2 + [(503, b"{}")] * 2
    assert connections == 4  # a new connection for each


def test_a_connection_the_server_closed_while_idle_is_replaced_not_used() -> None:
    async def go() -> int:
        # Answers, then closes the connection, as an idle keep-alive timeout would.
        async with Server(lambda n: [OK, HANG_UP]) as server:
            client = pool(server.port)
            await client.post(b"{}", {})
            await until(lambda: not client._idle[-1][0].reusable)  # it saw the server go
            assert (await client.post(b"{}", {})).status == 200
            client.close()
            return server.connections

    assert run(go()) == 2


@pytest.mark.parametrize("script,error", [
    (lambda n: None, "closed before the answer"),
    (lambda n: [OK[:40]], "closed before the answer"),
    (lambda n: [b"SMTP/1.0 220 hello\r\n\r\n"], "status line"),
    # framed by the end of the connection, but that end is a reset: not all of it
    (lambda n: [b"HTTP/1.0 200 OK\r\n\r\npart of it", RESET], "closed before the answer"),
    (lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"], "Content-Length"),
    (lambda n: ["HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1")],
     "Content-Length"),
    (lambda n: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n"], "chunk size"),
    (lambda n: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], "chunk size"),
    (lambda n: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"], "transfer coding"),
    (lambda n: [b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"], "header field"),
])
def test_a_broken_answer_is_a_transient_connection_error(script: Script, error: str) -> None:
    async def go() -> BaseException:
        async with Server(lambda n: None if script(n) is None else [*script(n), HANG_UP]
                          ) as server:
            client = pool(server.port)
            with pytest.raises(HTTPError) as caught:
                await client.post(b"{}", {})
            client.close()
            return caught.value

    exc = run(go())
    assert error in str(exc)
    verdict = classify(exc, region="us-east-1")
    assert not verdict.permanent and verdict.code == "ConnectionError"


def test_an_endpoint_that_does_not_answer_times_out_and_one_that_is_down_refuses(
        refused_url: str) -> None:
    async def go() -> tuple[BaseException, BaseException]:
        async with Server(lambda n: [b"", OK], pause=5) as server:  # the answer after 5 s
            client = pool(server.port, read_timeout=0.3)
            with pytest.raises(TimeoutError) as slow:
                await client.post(b"{}", {})
            client.close()
        down = pool(int(refused_url.rsplit(":", 1)[1]))  # nothing listens: refused
        with pytest.raises(OSError) as refused:
            await down.post(b"{}", {})
        return slow.value, refused.value

    slow, refused = run(go())
    assert classify(slow, region=None).code == "Timeout"
    assert classify(refused, region=None).code == "ConnectionError"


def test_a_large_upload_given_up_on_leaves_no_error_unread() -> None:
    # The server reads nothing: the upload waits for the socket, times out, and the
    # connection is aborted, which fails the answer nobody waits for any more. asyncio
    # reports such a failure as "Future exception was never retrieved".
    reported: list[str] = []

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context["message"]))
        never = asyncio.Event()
        async with Server(lambda n: [OK], hold=never) as server:
            client = pool(server.port, read_timeout=0.3)
            with pytest.raises(TimeoutError):
                await client.post(b"x" * (12 * 1024 * 1024), {})
            client.close()
            await asyncio.sleep(0.1)  # the abort's connection_lost runs
            gc.collect()  # an unread failure is reported when its future is collected
            never.set()  # the server's side sees the reset, and closes
            await until(lambda: server.closed == server.connections)

    run(go())
    assert [m for m in reported if "never retrieved" in m] == []


def test_a_large_body_arrives_byte_for_byte_through_flow_control() -> None:
    body = bytes(range(256)) * (12 * 1024 * 1024 // 256)  # 12 MB: many socket-fulls

    async def go() -> bytes:
        async with Server(lambda n: [OK]) as server:
            client = pool(server.port)
            assert (await client.post(body, {})).status == 200
            client.close()
            return server.requests[0][1]

    assert run(go()) == body


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async def go() -> int:
        async with Server(lambda n: [OK]) as server:
            client = pool(server.port)
            with pytest.raises(ValueError):
                await client.post(b"{}", {"X-Amz-Security-Token": "abc\r\nX-Evil: 1"})
            client.close()
            return server.connections

    assert run(go()) == 0


def test_https_with_the_ca_given_and_refused_with_another(certs: Certs) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certs.cert, certs.key)
    trusting = ssl.create_default_context(cafile=str(certs.ca))

    async def go() -> None:
        async with Server(lambda n: [OK], tls=server_tls) as server:
            # The test certificate names 127.0.0.1; the client checks the name it dials.
            client = Pool(f"https://127.0.0.1:{server.port}/v2/email/outbound-emails",
                          ssl_context=trusting, size=2, connect_timeout=2, read_timeout=2,
                          user_agent="t")
            assert (await client.post(b"{}", {})).status == 200
            client.close()
            stranger = Pool(f"https://127.0.0.1:{server.port}/v2/email/outbound-emails",
                            ssl_context=ssl.create_default_context(), size=2,
                            connect_timeout=2, read_timeout=2, user_agent="t")
            with pytest.raises(ssl.SSLCertVerificationError):
                await stranger.post(b"{}", {})

    run(go())


def test_behind_a_proxy_sendemail_goes_through_it(monkeypatch: pytest.MonkeyPatch,
                                                  refused_url: str) -> None:
    # With HTTP(S)_PROXY set, sesv2http sends through aiohttp, which speaks to proxies;
    # this "proxy" answers for SES itself, and the endpoint behind it is not even there.
    from aiobotocore.credentials import AioCredentials

    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    endpoint = refused_url

    async def go() -> tuple[Any, list[tuple[bytes, bytes]]]:
        async with Server(lambda n: [OK]) as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            client = SendEmailClient(endpoint, "us-east-1", AioCredentials("AKID", "secret"),
                                     pool_size=2, connect_timeout=2, read_timeout=2)
            await client.start()
            answer = await client.send_email({
                "FromEmailAddress": "a@example.com",
                "Destination": {"ToAddresses": ["b@example.net"]},
                "Content": {"Raw": {"Data": b"Subject: hi\r\n\r\nhi\r\n"}}})
            await client.aclose()
            return answer, proxy.requests

    answer, requests = run(go())
    assert answer == {"MessageId": "m-1"}
    [(head, body)] = requests
    assert head.startswith(f"POST {endpoint}/v2/email/outbound-emails HTTP/1.1".encode())
    assert b"Authorization: AWS4-HMAC-SHA256 Credential=AKID/" in head
    assert b'"Data":"U3ViamVjdDogaGkNCg0KaGkNCg=="' in body


def test_a_connection_idle_longer_than_keep_idle_is_not_used_again() -> None:
    async def go() -> int:
        async with Server(lambda n: [OK]) as server:
            client = pool(server.port, keep_idle=0.0)
            for _ in range(2):
                assert (await client.post(b"{}", {})).status == 200
            client.close()
            return server.connections

    assert run(go()) == 2


def test_an_answer_before_the_body_is_all_sent_ends_the_upload() -> None:
    # A server that answers from the head (413, say) and reads nothing more: the client
    # returns the answer instead of waiting for the socket until it times out, and does
    # not send its next request where the server still expects the rest of the body.
    early = b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\n{}"
    done = asyncio.Event()
    connections = []

    async def answer_at_once(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(early)
        await writer.drain()
        await done.wait()  # reads nothing more, keeps the connection
        writer.close()

    async def go() -> int:
        listening = socket.socket()
        # Small, so that the kernel cannot take the whole body while the server reads none.
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listening.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(answer_at_once, sock=listening)
        try:
            client = pool(server.sockets[0].getsockname()[1], read_timeout=3)
            response = await client.post(b"x" * (16 * 1024 * 1024), {})
            again = await client.post(b"{}", {})
            client.close()
            assert (again.status, len(connections)) == (413, 2)
            return response.status
        finally:
            done.set()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)  # the handler's close runs

    assert run(go()) == 413
